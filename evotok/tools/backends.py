"""Where codes come from for the CLI and the dataset tokenizer: a Runtime in this process, or a server.

Both backends take *encoded image bytes* (exactly what is on disk) and apply the service's one
preprocessing rule (``evotok.imaging``, pure: no HTTP; centre square bicubic to ``image_size``), so a local
run and a ``--server`` run feed the model the same pixels and record the same failure codes.

- ``encode_files(blobs) -> list[codes (h, w, D) uint16 | ImageFailure]``: bad images are reported per item,
  never raised; infrastructure errors (server down after retries, backend crash) are raised.
- ``decode(codes (h, w, d)) -> PNG bytes``.
"""

from __future__ import annotations

import asyncio
import io
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from evotok.export.types import ModelInfo

log = logging.getLogger(__name__)

RESIZE: Literal["center-crop"] = "center-crop"
# The client-side reasons an image is "unreadable" (the item fails, the run goes on): evotok.imaging's
# IMAGE_ERROR_CODES, which are also the server's codes for them (not imported here: that would load Pillow).
IMAGE_ERROR_CODES = frozenset(
    {"invalid_image", "unsupported_media_type", "payload_too_large", "invalid_input"}
)


@dataclass(frozen=True)
class ImageFailure:
    code: str  # the service's machine-readable error code (invalid_image, unsupported_media_type, ...)
    message: str


def preprocessing_record(info: ModelInfo) -> dict[str, Any]:
    """How pixels were prepared, for manifests."""
    return {
        "resize": RESIZE,
        "image_size": info.image_size,
        "rule": "evotok.imaging: EXIF orientation applied; the centred square resampled to image_size (bicubic); "
        "grey, 1-bit, palette, CMYK and 16-bit converted to 8-bit RGB; alpha flattened onto white; first frame "
        "of animations",
        "input": "uint8 RGB (H, W, 3)",
    }


class CodesBackend(ABC):
    info: ModelInfo

    @abstractmethod
    def encode_files(self, blobs: Sequence[bytes]) -> list[npt.NDArray[np.uint16] | ImageFailure]:
        """Encoded images -> all-depth codes ``(h, w, D)`` uint16, or a failure, per item (same order)."""

    @abstractmethod
    def decode(self, codes: npt.NDArray[np.uint16]) -> bytes:
        """``(h, w, d)`` codes -> PNG bytes of the reconstruction."""

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


class LocalBackend(CodesBackend):
    """A ``Runtime`` in this process (``load_runtime()`` for the shipped model)."""

    def __init__(self, runtime: Any, max_image_pixels: int = 40_000_000) -> None:
        self.runtime = runtime
        self.info = runtime.info
        self.max_image_pixels = max_image_pixels

    def encode_files(self, blobs: Sequence[bytes]) -> list[npt.NDArray[np.uint16] | ImageFailure]:
        from evotok.imaging import ImageError, prepare_image

        out: list[npt.NDArray[np.uint16] | ImageFailure] = []
        ok_rows: list[int] = []
        pixels: list[npt.NDArray[np.uint8]] = []
        for data in blobs:
            try:
                pixels.append(prepare_image(data, self.info.image_size, RESIZE, self.max_image_pixels))
            except ImageError as exc:
                out.append(ImageFailure(exc.code, exc.message))
                continue
            ok_rows.append(len(out))
            out.append(ImageFailure("pending", ""))
        if pixels:
            codes = np.asarray(self.runtime.encode(np.stack(pixels)), dtype=np.uint16)  # (B, h, w, D)
            for row, c in zip(ok_rows, codes, strict=True):
                out[row] = np.ascontiguousarray(c)
        return out

    def decode(self, codes: npt.NDArray[np.uint16]) -> bytes:
        from PIL import Image

        image = self.runtime.decode(np.asarray(codes)[None])[0]  # (H, W, 3) uint8
        buf = io.BytesIO()
        Image.fromarray(image, "RGB").save(buf, format="PNG")
        return buf.getvalue()

    def close(self) -> None:
        self.runtime.close()


class RemoteBackend(CodesBackend):
    """An EvoTok server: one ``/encode`` request per image, up to ``concurrency`` in flight."""

    def __init__(
        self, url: str, *, api_key: str | None = None, concurrency: int = 16, timeout_s: float = 120.0
    ) -> None:
        from evotok.client import Client

        self.url, self.api_key, self.concurrency, self.timeout_s = url, api_key, concurrency, timeout_s
        self._sync = Client(url, api_key=api_key, timeout_s=timeout_s)
        self.info = self._sync.info()

    def encode_files(self, blobs: Sequence[bytes]) -> list[npt.NDArray[np.uint16] | ImageFailure]:
        return asyncio.run(self._encode_all(blobs))

    async def _encode_all(self, blobs: Sequence[bytes]) -> list[npt.NDArray[np.uint16] | ImageFailure]:
        from evotok.client import AsyncClient, EvoTokError

        async with AsyncClient(
            self.url, api_key=self.api_key, timeout_s=self.timeout_s, max_concurrency=self.concurrency
        ) as client:

            async def one(data: bytes) -> npt.NDArray[np.uint16] | ImageFailure:
                try:
                    return (await client.encode(data, fmt="npy")).codes
                except EvoTokError as exc:
                    if exc.code in IMAGE_ERROR_CODES:
                        return ImageFailure(exc.code, exc.message)
                    raise

            return list(await asyncio.gather(*(one(b) for b in blobs)))

    def decode(self, codes: npt.NDArray[np.uint16]) -> bytes:
        return self._sync.decode(codes).png

    def close(self) -> None:
        self._sync.close()


def make_backend(
    server: str | None,
    *,
    api_key: str | None = None,
    concurrency: int = 16,
    weights: str | None = None,
    backend: str = "onnxruntime",
) -> CodesBackend:
    """``--server URL`` -> RemoteBackend; otherwise the model in process via ``load_runtime``."""
    if server:
        return RemoteBackend(server, api_key=api_key, concurrency=concurrency)
    from evotok.export.runtime import load_runtime

    return LocalBackend(load_runtime(weights, backend))  # type: ignore[arg-type]
