"""``inference.GRPCInferenceService`` (ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata,
ModelInfer) on ``grpc.aio``, in the app's process and event loop, so it shares the app's batcher, model card,
decode bound and limits.

The message definitions and the servicer base are the generated stubs that ``tritonclient[grpc]`` ships
(``tritonclient.grpc.service_pb2`` and ``service_pb2_grpc``, package ``inference``, Triton's
``grpc_service.proto``); no protocol code is written here by hand. The other RPCs of that service (streaming,
repository, shared memory, statistics, trace) answer ``UNIMPLEMENTED``.

- Started and stopped by the app's lifespan (``start``/``stop``) when ``EVOTOK_GRPC_PORT`` is not 0 (default 8001,
  as Triton), on ``EVOTOK_HOST``; a port that cannot be bound fails the start-up.
- Messages larger than ``EVOTOK_MAX_BODY_BYTES`` are refused by gRPC before they are parsed
  (``RESOURCE_EXHAUSTED``); at most ``EVOTOK_LIMIT_CONCURRENCY`` RPCs run at once.
- Deadline: the call's gRPC deadline (``time_remaining()``), capped by ``EVOTOK_REQUEST_TIMEOUT_S`` and shortened
  by Triton's ``timeout`` parameter; past it the call ends ``DEADLINE_EXCEEDED``. A cancelled call cancels its
  queued items.
- Auth: with ``EVOTOK_API_KEYS`` set, every RPC but the three health RPCs needs the metadata
  ``authorization: Bearer <key>`` (as the HTTP routes).
- Errors: gRPC status codes from the service's error table (``status.grpc_code``).
- The standard health service ``grpc.health.v1.Health`` (from ``grpcio-health-checking``), for Kubernetes'
  ``grpc`` probes, meshes and gRPC load balancers: ``Check`` with service ``""`` or
  ``inference.GRPCInferenceService`` answers ``SERVING`` when ``/readyz`` would answer 200, ``liveness`` when
  ``/healthz`` would; unknown services ``NOT_FOUND``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from evotok import __version__
from evotok.service.auth import check_bearer
from evotok.service.core import Op
from evotok.service.errors import (
    InvalidInput,
    ServiceError,
)
from evotok.service.imaging import ResizeMode
from evotok.service.oip import models
from evotok.service.oip.status import grpc_code
from evotok.service.oip.tensors import InferRequest, OutTensor, RequestedOutput, Tensor, check_shape
from evotok.service.routes.common import decode_images, submit_items, timed
from evotok.service.state import ServiceState

if TYPE_CHECKING:
    import grpc
    from fastapi import FastAPI

log = logging.getLogger(__name__)

_CONTENTS_FIELD = {
    "BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents",
}


def check_api_key(metadata: Any, keys: list[Any]) -> None:
    """``authorization: Bearer <key>`` from the call metadata, by the rule of ``auth.check_bearer``."""
    header = ""
    for key, value in metadata or ():
        if key.lower() == "authorization":
            header = value if isinstance(value, str) else value.decode("latin1")
    check_bearer(header, keys, "the metadata 'authorization: Bearer <api key>'")


def _param_value(p: Any) -> Any:
    which = p.WhichOneof("parameter_choice")
    return None if which is None else getattr(p, which)


def request_from_proto(msg: Any) -> InferRequest:
    """``ModelInferRequest`` -> ``InferRequest`` (raw contents stay bytes; shapes are checked by the model)."""
    raw = list(msg.raw_input_contents)
    if raw and len(raw) != len(msg.inputs):
        raise InvalidInput(f"{len(raw)} raw_input_contents for {len(msg.inputs)} inputs; send one per input")
    inputs: list[Tensor] = []
    for i, t in enumerate(msg.inputs):
        shape = check_shape(t.name, list(t.shape))
        if raw:
            inputs.append(Tensor(t.name, t.datatype, shape, raw=raw[i]))
        elif t.datatype == "BYTES":
            inputs.append(Tensor(t.name, t.datatype, shape, elements=list(t.contents.bytes_contents)))
        elif t.datatype in _CONTENTS_FIELD:
            inputs.append(Tensor(t.name, t.datatype, shape, data=list(getattr(t.contents, _CONTENTS_FIELD[t.datatype]))))
        else:
            raise InvalidInput(f"input {t.name!r}: datatype {t.datatype!r} is not supported")
    outputs = [RequestedOutput(o.name) for o in msg.outputs] or None
    params = {k: _param_value(v) for k, v in msg.parameters.items()}
    return InferRequest(msg.id, inputs, outputs, params)


class Servicer:
    """The servicer; subclassed from the generated base at ``start`` (so importing this module needs no grpc)."""

    def __init__(self, app: FastAPI, pb: Any) -> None:
        self.app = app
        self.pb = pb

    @property
    def state(self) -> ServiceState:
        state: ServiceState = self.app.state.evotok
        return state

    async def _run(self, context: Any, fn: Callable[[], Any], auth: bool = True) -> Any:
        """Run ``fn`` (sync or async); a ServiceError ends the call with its mapped status code."""
        error: tuple[grpc.StatusCode, str] | None = None
        try:
            if auth:
                check_api_key(context.invocation_metadata(), self.state.settings.api_keys)
            out = fn()
            if asyncio.iscoroutine(out):
                out = await out
            return out
        except ServiceError as exc:
            error = (grpc_code(exc), exc.message)
        except Exception:
            import grpc

            log.exception("unhandled error in a gRPC call")
            error = (grpc.StatusCode.INTERNAL, "internal server error; the event was logged")
        await context.abort(*error)  # raises

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return self.pb.ServerLiveResponse(live=self.state.batcher.liveness_problem() is None)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return self.pb.ServerReadyResponse(ready=self.state.not_ready_reason() is None)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        def work() -> Any:
            models.check_model(request.name, request.version, self.state.info)
            return self.pb.ModelReadyResponse(ready=self.state.not_ready_reason() is None)

        return await self._run(context, work, auth=False)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        from evotok.service.oip.http import EXTENSIONS

        return await self._run(context, lambda: self.pb.ServerMetadataResponse(
            name="evotok", version=__version__, extensions=EXTENSIONS))

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        def work() -> Any:
            models.check_model(request.name, request.version, self.state.info)
            meta = models.model_metadata(request.name, self.state.model_info())
            tm = self.pb.ModelMetadataResponse.TensorMetadata
            return self.pb.ModelMetadataResponse(
                name=meta["name"], versions=meta["versions"], platform=meta["platform"],
                inputs=[tm(**t) for t in meta["inputs"]], outputs=[tm(**t) for t in meta["outputs"]])

        return await self._run(context, work)

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        return await self._run(context, lambda: self._infer(request, context))

    async def _infer(self, msg: Any, context: Any) -> Any:
        state = self.state
        models.check_model(msg.model_name, msg.model_version, state.info)
        info = state.model_info()
        req = request_from_proto(msg)
        budget = state.settings.request_timeout_s
        remaining = context.time_remaining()
        if remaining is not None:
            budget = min(budget, remaining)
        asked = models.timeout_s(req.parameters)
        if asked is not None:
            budget = min(budget, asked)
        deadline = time.monotonic() + budget
        outs = await models.infer(state, info, msg.model_name, req, self._transport(deadline))
        return self._response(msg, info.weights_hash, outs)

    def _transport(self, deadline: float) -> models.Transport:
        state = self.state
        info = state.model_info()

        async def submit(op: Op, payloads: list[Any]) -> list[Any]:
            return await submit_items(state, op, payloads, deadline)

        async def images(blobs: list[bytes], op: Op, resize: ResizeMode, background: str | None) -> list[Any]:
            return await decode_images(blobs, state, info, resize, op, deadline, background)  # the HTTP path's

        async def output(op: Op, fn: Callable[[], Any]) -> Any:
            return await timed(op, info, fn)

        return models.Transport(submit, images, output)

    def _response(self, msg: Any, version: str, outs: list[OutTensor]) -> Any:
        tensor = self.pb.ModelInferResponse.InferOutputTensor
        return self.pb.ModelInferResponse(
            model_name=msg.model_name, model_version=version, id=msg.id,
            outputs=[tensor(name=t.name, datatype=t.datatype, shape=list(t.shape)) for t in outs],
            raw_output_contents=[t.raw() for t in outs])


def _add_health(server: Any, app: FastAPI) -> None:
    """``grpc.health.v1.Health``: readiness (service ``""`` / the inference service) and liveness (``liveness``),
    answered from the same state as ``/readyz`` and ``/healthz``."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    state: ServiceState = app.state.evotok
    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING

    class Health(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
        async def Check(self, request: Any, context: Any) -> Any:
            if request.service in ("", "inference.GRPCInferenceService"):
                ok = state.not_ready_reason() is None
            elif request.service == "liveness":
                ok = state.batcher.liveness_problem() is None
            else:
                await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
            return health_pb2.HealthCheckResponse(status=serving if ok else not_serving)

    health_pb2_grpc.add_HealthServicer_to_server(Health(), server)


async def start(app: FastAPI) -> grpc.aio.Server | None:
    """Start the gRPC server on ``EVOTOK_GRPC_PORT`` (None when it is 0)."""
    settings = app.state.evotok.settings
    if not settings.grpc_port:
        return None
    try:
        import grpc
        from tritonclient.grpc import service_pb2, service_pb2_grpc
    except ImportError as exc:
        if "grpc_port" not in settings.model_fields_set:  # the default port: an install without the extra serves HTTP
            log.warning("gRPC (Open Inference Protocol) is off: its packages are not installed (%s); install the "
                        "`oip` extra to serve it on port %d", exc, settings.grpc_port)
            return None
        raise RuntimeError(f"EVOTOK_GRPC_PORT={settings.grpc_port} but the gRPC stack is not installed ({exc}); "
                           "install the `oip` extra (grpcio, tritonclient[grpc]) or set EVOTOK_GRPC_PORT=0") from exc

    servicer_cls = type("EvoTokInferenceServicer", (Servicer, service_pb2_grpc.GRPCInferenceServiceServicer), {})
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", settings.max_body_bytes),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 1 if settings.workers > 1 else 0),  # uvicorn workers share the port
        ],
        maximum_concurrent_rpcs=settings.limit_concurrency,
    )
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer_cls(app, service_pb2), server)
    _add_health(server, app)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    try:
        server.add_insecure_port(f"{host}:{settings.grpc_port}")
    except RuntimeError as exc:
        raise RuntimeError(f"cannot serve gRPC on {host}:{settings.grpc_port} ({exc}); is the port in use? set "
                           "EVOTOK_GRPC_PORT to a free port, or 0 to turn gRPC off") from exc
    await server.start()
    log.info("Open Inference Protocol gRPC on %s:%d", host, settings.grpc_port)
    return server


async def stop(server: grpc.aio.Server | None, grace_s: float) -> None:
    """Stop taking calls; calls in flight get up to ``grace_s`` to finish."""
    if server is not None:
        await server.stop(grace_s)
