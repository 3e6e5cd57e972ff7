"""Smoke client for a running EvoTok deployment: code agreement, round trip and throughput.

Run by ``deploy/smoke.sh`` inside the API container (``docker compose exec -T api python - ARGS <
deploy/smoke_client.py``), or from any machine with the evotok package installed (numpy, pillow, httpx)::

    python deploy/smoke_client.py --url http://127.0.0.1:8000 --golden weights/evotok-small/golden.npz

1. Encodes the golden images (``golden.npz``: ``images`` (N, H, W, 3) uint8, ``codes`` (N, h, w, D) uint16
   from the fp32 reference) through ``POST /encode`` and reports the fraction of identical codes, overall
   and per depth, compared as the service's own self-test compares them (``evotok.export.golden.compare_codes``:
   a position whose first difference is an fp32 near-tie of the reference is not counted from there on).
2. Decodes those codes through ``POST /decode`` and reports the PSNR of each PNG against its input image.
3. Optional ``--image`` photos: encode + decode, check the PNG.
4. Sends ``--requests`` encode requests with ``--concurrency`` in flight and reports images/s and latency
   percentiles.

Prints one JSON object; exits 1 when agreement is below ``--min-agreement`` or any request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from evotok.export.golden import compare_codes


@dataclass(frozen=True)
class Throughput:
    requests: int
    concurrency: int
    errors: int
    seconds: float
    images_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def encode(client: httpx.Client, png: bytes) -> np.ndarray:
    """``(h, w, D)`` uint16 codes of one PNG."""
    r = client.post("/encode", content=png, headers={"Content-Type": "image/png"})
    r.raise_for_status()
    return np.asarray(r.json()["codes"], dtype=np.uint16)


def decode(client: httpx.Client, codes: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 image decoded by the server from ``(h, w, d)`` codes."""
    r = client.post("/decode", json={"codes": codes.tolist()})
    r.raise_for_status()
    assert r.headers["content-type"].startswith("image/png"), r.headers["content-type"]
    return np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"))


async def throughput(
    url: str, pngs: list[bytes], n: int, concurrency: int, api_key: str | None
) -> Throughput:
    latencies: list[float] = []
    errors = 0
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(
        base_url=url, headers=_headers(api_key), timeout=60.0, limits=limits
    ) as client:

        async def one(i: int) -> None:
            nonlocal errors
            async with sem:
                t0 = time.perf_counter()
                r = await client.post(
                    "/encode", content=pngs[i % len(pngs)], headers={"Content-Type": "image/png"}
                )
                if r.status_code == 200:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1

        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        seconds = time.perf_counter() - start
    ms = np.asarray(latencies or [float("nan")]) * 1000.0
    return Throughput(
        requests=n,
        concurrency=concurrency,
        errors=errors,
        seconds=round(seconds, 3),
        images_per_s=round(len(latencies) / seconds, 2),
        p50_ms=round(float(np.percentile(ms, 50)), 2),
        p95_ms=round(float(np.percentile(ms, 95)), 2),
        p99_ms=round(float(np.percentile(ms, 99)), 2),
    )


def _default_api_key() -> str | None:
    keys = json.loads(os.environ.get("EVOTOK_API_KEYS", "[]") or "[]")
    return str(keys[0]) if keys else None


def run(args: argparse.Namespace) -> dict[str, Any]:
    golden = np.load(args.golden, allow_pickle=False)
    images = np.asarray(golden["images"], dtype=np.uint8)  # (N, H, W, 3)
    ref = np.asarray(golden["codes"], dtype=np.uint16)  # (N, h, w, D)
    pngs = [_png(im) for im in images]
    api_key = args.api_key or _default_api_key()
    report: dict[str, Any] = {"url": args.url, "golden_images": len(images)}
    with httpx.Client(base_url=args.url, headers=_headers(api_key), timeout=60.0) as client:
        info = client.get("/info")
        info.raise_for_status()
        report["info"] = info.json()
        codes = np.stack([encode(client, p) for p in pngs])
        if codes.shape != ref.shape:
            raise SystemExit(f"codes shape {codes.shape} != golden {ref.shape}")
        margins = np.asarray(golden["margins"], dtype=np.float32) if "margins" in golden.files else None
        agreement = compare_codes(codes, ref, margins)
        report["code_agreement"] = agreement.agreement
        report["code_agreement_by_depth"] = [round(x, 6) for x in agreement.by_depth]
        report["code_near_ties"] = agreement.near_ties
        recon = [decode(client, c) for c in codes]
        report["round_trip_psnr_db"] = [round(_psnr(r, im), 2) for r, im in zip(recon, images, strict=True)]
        photos = []
        for path in args.image:
            c = encode(client, Path(path).read_bytes())
            out = decode(client, c)
            photos.append({"image": str(path), "codes_shape": list(c.shape), "png_shape": list(out.shape)})
        report["photos"] = photos
    tp = asyncio.run(throughput(args.url, pngs, args.requests, args.concurrency, api_key))
    report["throughput"] = asdict(tp)
    report["passed"] = report["code_agreement"] >= args.min_agreement and tp.errors == 0
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8000")
    weights = os.environ.get("EVOTOK_WEIGHTS", "weights/evotok-small")
    p.add_argument("--golden", type=Path, default=Path(weights) / "golden.npz")
    p.add_argument("--image", action="append", default=[], help="extra photo(s) to encode and decode")
    p.add_argument("--requests", type=int, default=256)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument(
        "--min-agreement", type=float, default=float(os.environ.get("EVOTOK_SELF_TEST_THRESHOLD", "1.0"))
    )
    p.add_argument("--api-key", default=None, help="bearer token (default: first of $EVOTOK_API_KEYS)")
    args = p.parse_args(argv)
    report = run(args)
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
