"""create_app with a batcher that is not the in-process one (the Redis mode path): the model card comes from
``config.json``, readiness from the batcher, and requests flow through ``Batcher.submit``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from fastapi.testclient import TestClient

from evotok.export.fake import FakeRuntime
from evotok.model.config import get_preset
from evotok.service.app import create_app
from evotok.service.batcher import Batcher, BatcherStats, Op
from evotok.service.errors import NotReady
from tests.service.conftest import make_settings, png_bytes


class StubBatcher(Batcher):
    """Runs each item at once on a FakeRuntime shaped like the tiny preset; ``ready`` is switchable."""

    def __init__(self, runtime: FakeRuntime) -> None:
        self.runtime = runtime
        self.ready = False
        self.ops: list[Op] = []
        self.drained = False

    async def start(self) -> None:
        return None

    async def submit(self, op: Op, payload: npt.NDArray[Any], deadline: float) -> npt.NDArray[Any]:
        if not self.ready:
            raise NotReady("no live worker")
        self.ops.append(op)
        fn = {"encode": self.runtime.encode, "decode": self.runtime.decode,
              "embed_image": self.runtime.embed_images, "embed_codes": self.runtime.embed_codes}[op]
        return fn(payload[None])[0]  # type: ignore[no-any-return]

    def stats(self) -> BatcherStats:
        return BatcherStats(0, 0, 0.0, self.ready, self.drained)

    async def drain(self, timeout_s: float = 30.0) -> None:
        self.drained = True


def test_external_batcher_uses_config_json(tmp_path: Path) -> None:
    cfg = get_preset("evotok-tiny")
    card = {"format": "evotok/1", "name": cfg.name, "hash": "cd" * 32, "config": cfg.to_dict()}
    (tmp_path / "config.json").write_text(json.dumps(card))
    rt = FakeRuntime(image_size=cfg.image_size, grid=cfg.grid, num_depths=cfg.num_depths,
                     codebook_size=cfg.codebook_size, pixel_depth=cfg.pixel_depth,
                     semantic_depth=cfg.semantic_depth, semantic_dim=cfg.semantic_decoder.out_dim)
    batcher = StubBatcher(rt)
    app = create_app(make_settings(weights=tmp_path, queue="redis"), batcher=batcher)
    with TestClient(app, raise_server_exceptions=False) as c:
        assert c.get("/readyz").status_code == 503
        r = c.post("/encode", content=png_bytes((50, 40)), headers={"content-type": "image/png"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"
        batcher.ready = True
        assert c.get("/readyz").status_code == 200
        info = c.get("/info").json()
        assert info["weights_hash"] == "cd" * 32 and info["grid"] == cfg.grid and info["queue"] == "redis"
        r = c.post("/encode", content=png_bytes((50, 40)), headers={"content-type": "image/png"})
        assert r.status_code == 200 and r.json()["shape"] == [cfg.grid, cfg.grid, cfg.num_depths]
        too_deep = np.zeros((cfg.grid, cfg.grid, cfg.num_depths + 1), int).tolist()
        assert c.post("/decode", json={"codes": too_deep}).status_code == 422
        assert c.post("/decode", json={"codes": r.json()["codes"]}).status_code == 200
        assert batcher.ops == ["encode", "decode"]
    assert batcher.drained
