"""Python clients for the EvoTok HTTP API: ``Client`` (blocking) and ``AsyncClient`` (asyncio).

Every endpoint has a method (encode, encode_many, decode, embed, info, healthz, readyz); results are typed
dataclasses with numpy arrays (codes uint16, depth last). Failed calls raise ``EvoTokError`` carrying the
service's JSON error ``{code, message, status}``. 429/503 are retried with exponential backoff honouring
``Retry-After`` (``RetryPolicy``); API keys travel as bearer tokens.
"""

from __future__ import annotations

from evotok.client.async_client import AsyncClient
from evotok.client.errors import EvoTokError
from evotok.client.retry import NO_RETRY, RetryPolicy
from evotok.client.sync_client import Client
from evotok.client.types import DecodeResult, EmbedResult, EncodeResult, Health, ModelRef

__all__ = [
    "NO_RETRY",
    "AsyncClient",
    "Client",
    "DecodeResult",
    "EmbedResult",
    "EncodeResult",
    "EvoTokError",
    "Health",
    "ModelRef",
    "RetryPolicy",
]
