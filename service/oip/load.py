"""A small load generator for the v2 paths (``encode`` with an image file), HTTP or gRPC, through the real
``tritonclient`` asyncio clients, as a Triton/KServe user's tools would drive the server.

``v2_load(target, "http" | "grpc", image, clients=8, duration_s=10)`` keeps ``clients`` requests in flight for
``duration_s`` seconds (after ``warmup`` requests per client that are not counted) and returns images/s and the
latency percentiles. ``target`` is ``host:port`` (the HTTP port for ``http``, ``EVOTOK_GRPC_PORT`` for ``grpc``).
Needs ``tritonclient[http,grpc]`` (the ``dev`` extra; ``tritonclient.http.aio`` needs aiohttp).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

Transport = Literal["http", "grpc"]


@dataclass(frozen=True)
class LoadResult:
    transport: str
    clients: int
    requests: int  # answered 200 / OK within the measured window
    errors: int  # failed requests (any status) within the window
    seconds: float
    images_per_s: float
    p50_ms: float
    p95_ms: float
    latencies_s: tuple[float, ...] = field(default=(), repr=False)  # every answered request's latency

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "latencies_s"}


def _client(transport: Transport, target: str, timeout_s: float) -> Any:
    if transport == "http":
        import tritonclient.http.aio as thaio

        return thaio.InferenceServerClient(target, conn_limit=None, conn_timeout=timeout_s)
    import tritonclient.grpc.aio as tgaio

    return tgaio.InferenceServerClient(target)


def _input(transport: Transport, image: bytes) -> Any:
    if transport == "http":
        import tritonclient.http.aio as thaio

        inp: Any = thaio.InferInput("IMAGE", [1], "BYTES")
        inp.set_data_from_numpy(np.array([image], dtype=np.object_), binary_data=True)
        return inp
    import tritonclient.grpc.aio as tgaio

    inp = tgaio.InferInput("IMAGE", [1], "BYTES")
    inp.set_data_from_numpy(np.array([image], dtype=np.object_))
    return inp


def _output(transport: Transport) -> Any:
    if transport == "http":
        import tritonclient.http.aio as thaio

        return thaio.InferRequestedOutput("CODES", binary_data=True)
    import tritonclient.grpc.aio as tgaio

    return tgaio.InferRequestedOutput("CODES")


async def v2_load_async(target: str, transport: Transport, image: bytes, *, clients: int = 8,
                        duration_s: float = 10.0, warmup: int = 2, api_key: str | None = None,
                        request_timeout_s: float = 60.0) -> LoadResult:
    """See ``v2_load``."""
    client = _client(transport, target, request_timeout_s)
    headers = {"authorization": f"Bearer {api_key}"} if api_key else None
    inputs, outputs = [_input(transport, image)], [_output(transport)]
    latencies: list[float] = []
    errors = 0

    async def one() -> float:
        start = time.perf_counter()
        if transport == "http":
            await client.infer("encode", inputs, outputs=outputs, headers=headers, timeout=None)
        else:
            await client.infer("encode", inputs, outputs=outputs, headers=headers, client_timeout=request_timeout_s)
        return time.perf_counter() - start

    async def worker(end: float) -> None:
        nonlocal errors
        while time.perf_counter() < end:
            try:
                latencies.append(await one())
            except Exception:
                errors += 1

    try:
        for _ in range(warmup):
            await asyncio.gather(*(one() for _ in range(clients)))
        begin = time.perf_counter()
        await asyncio.gather(*(worker(begin + duration_s) for _ in range(clients)))
        seconds = time.perf_counter() - begin
    finally:
        await client.close()
    ms = np.array(latencies) * 1e3 if latencies else np.array([float("nan")])
    return LoadResult(transport, clients, len(latencies), errors, seconds, len(latencies) / seconds,
                      float(np.percentile(ms, 50)), float(np.percentile(ms, 95)), tuple(latencies))


def v2_load(target: str, transport: Transport, image: bytes, *, clients: int = 8, duration_s: float = 10.0,
            warmup: int = 2, api_key: str | None = None, request_timeout_s: float = 60.0) -> LoadResult:
    """Drive v2 ``encode`` (one image file per request, binary tensors) at ``clients`` concurrent requests for
    ``duration_s`` seconds; images/s, p50 and p95 latency of the requests answered in that window."""
    return asyncio.run(v2_load_async(target, transport, image, clients=clients, duration_s=duration_s,
                                     warmup=warmup, api_key=api_key, request_timeout_s=request_timeout_s))
