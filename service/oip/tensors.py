"""v2 tensors on the wire, parsed without trusting any declared size.

A tensor arrives as one of:

- JSON ``data`` (HTTP): a flat or nested list in row-major order; BYTES elements are base64 strings (JSON
  cannot hold arbitrary bytes; Triton's own clients send BYTES as binary data, see below);
- binary data (HTTP binary tensor data extension): the JSON header is the first ``Inference-Header-Content-Length``
  bytes of the body and each binary input declares ``parameters.binary_data_size``; the blobs follow the header
  in input order;
- ``raw_input_contents`` (gRPC) or typed ``contents`` (gRPC ``InferTensorContents``).

Raw fixed-size tensors are little-endian; a raw BYTES tensor is each element as a 4-byte little-endian length
and its bytes. Every declared length is checked against the bytes that are really there (the header length,
each ``binary_data_size``, each BYTES length) and every shape against the model (``models.py``) before an
array is made; lies are ``invalid_input`` (422 / gRPC ``INVALID_ARGUMENT``).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from evotok.service.errors import InvalidInput

HEADER_LENGTH = "inference-header-content-length"
MAX_DIMS = 8
MAX_DIM = 2**31  # a dimension beyond this is a lie for any model here
MAX_JSON_INT_DIGITS = 20

# v2 datatype -> little-endian numpy dtype (BYTES has none: elements are byte strings)
NUMPY_OF: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"), "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
INTEGER_TYPES = ("UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64")


@dataclass
class Tensor:
    """One input tensor as received: exactly one of ``raw`` (binary), ``data`` (JSON / typed gRPC contents)
    and ``elements`` (BYTES already split, e.g. gRPC ``bytes_contents``) is set."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    raw: bytes | memoryview | None = None
    data: Any = None
    elements: list[bytes] | None = None


@dataclass
class RequestedOutput:
    name: str
    binary: bool | None = None  # HTTP: parameters.binary_data (None: the request's default)


@dataclass
class InferRequest:
    id: str
    inputs: list[Tensor]
    outputs: list[RequestedOutput] | None  # None: every output of the model
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class OutTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    array: npt.NDArray[Any] | None = None  # fixed-size datatypes
    elements: list[bytes] | None = None  # BYTES

    def raw(self) -> bytes:
        """The binary form: little-endian array bytes, or length-prefixed BYTES elements."""
        if self.elements is not None:
            return serialize_bytes(self.elements)
        assert self.array is not None
        return np.ascontiguousarray(self.array, dtype=NUMPY_OF[self.datatype]).tobytes()

    def json_data(self) -> list[Any]:
        """The JSON ``data``: a flat row-major list; BYTES as base64 strings."""
        if self.elements is not None:
            return [base64.b64encode(e).decode("ascii") for e in self.elements]
        assert self.array is not None
        return list(self.array.reshape(-1).tolist())


def serialize_bytes(elements: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def deserialize_bytes(raw: bytes | memoryview, count: int, name: str) -> list[bytes]:
    """``count`` length-prefixed elements that must fill ``raw`` exactly; a length that points past the end,
    a missing or an extra element is refused before anything is copied."""
    view = memoryview(raw)
    out: list[bytes] = []
    pos = 0
    for i in range(count):
        if pos + 4 > len(view):
            raise InvalidInput(f"input {name!r}: BYTES data ends before element {i} of {count}")
        (n,) = struct.unpack_from("<I", view, pos)
        pos += 4
        if n > len(view) - pos:
            raise InvalidInput(f"input {name!r}: BYTES element {i} declares {n} bytes but only "
                               f"{len(view) - pos} remain")
        out.append(bytes(view[pos:pos + n]))
        pos += n
    if pos != len(view):
        raise InvalidInput(f"input {name!r}: {len(view) - pos} bytes after the {count} BYTES elements its shape holds")
    return out


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_JSON_INT_DIGITS:
        raise InvalidInput(f"a JSON integer of {len(text)} digits is out of range")
    return int(text)


def loads(body: bytes | memoryview) -> Any:
    try:
        return json.loads(bytes(body), parse_int=_parse_int)
    except RecursionError as exc:
        raise InvalidInput("JSON nested too deeply") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"the inference request is not valid JSON: {exc}") from exc
    except ValueError as exc:
        raise InvalidInput(f"JSON numbers out of range: {exc}") from exc


def check_shape(name: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, list | tuple) or len(value) > MAX_DIMS:
        raise InvalidInput(f"input {name!r}: shape must be a list of at most {MAX_DIMS} integers, got {value!r:.80}")
    if not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_DIM for d in value):
        raise InvalidInput(f"input {name!r}: shape dimensions must be integers in 0..{MAX_DIM}, got {value!r:.80}")
    return tuple(int(d) for d in value)


def _params(obj: Any, where: str) -> dict[str, Any]:
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise InvalidInput(f"{where} parameters must be a JSON object")
    return obj


def parse_http(body: bytes, header_length: str | None) -> InferRequest:
    """An HTTP ``/infer`` body (JSON, or JSON header + binary blobs) -> ``InferRequest``; raw inputs are views
    into ``body`` (no copy)."""
    if header_length is None:
        json_end = len(body)
    else:
        text = header_length.strip()
        if not text.isdigit() or not 0 < int(text) <= len(body):
            raise InvalidInput(f"Inference-Header-Content-Length {header_length[:40]!r} must be a positive integer "
                               f"no larger than the body ({len(body)} bytes)")
        json_end = int(text)
    view = memoryview(body)
    obj = loads(view[:json_end])
    if not isinstance(obj, dict):
        raise InvalidInput("the inference request must be a JSON object")
    raw_inputs = obj.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("the inference request needs a non-empty 'inputs' list")
    pos = json_end
    inputs: list[Tensor] = []
    for item in raw_inputs:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) \
                or not isinstance(item.get("datatype"), str):
            raise InvalidInput("each input needs a 'name', a 'datatype' and a 'shape'")
        name = item["name"]
        shape = check_shape(name, item.get("shape"))
        size = _params(item.get("parameters"), f"input {name!r}").get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidInput(f"input {name!r}: binary_data_size must be a non-negative integer")
            if "data" in item:
                raise InvalidInput(f"input {name!r} has both 'data' and binary_data_size")
            if size > len(body) - pos:
                raise InvalidInput(f"input {name!r}: binary_data_size {size} but only {len(body) - pos} body bytes "
                                   "remain after the JSON header")
            inputs.append(Tensor(name, item["datatype"], shape, raw=view[pos:pos + size]))
            pos += size
        elif "data" in item:
            inputs.append(Tensor(name, item["datatype"], shape, data=item["data"]))
        else:
            raise InvalidInput(f"input {name!r} has neither 'data' nor parameters.binary_data_size")
    if pos != len(body):
        raise InvalidInput(f"{len(body) - pos} body bytes follow the inputs' declared binary data")
    params = _params(obj.get("parameters"), "request")
    outputs = None
    if obj.get("outputs") is not None:
        if not isinstance(obj["outputs"], list):
            raise InvalidInput("'outputs' must be a list")
        outputs = []
        for out in obj["outputs"]:
            if not isinstance(out, dict) or not isinstance(out.get("name"), str):
                raise InvalidInput("each requested output needs a 'name'")
            binary = _params(out.get("parameters"), f"output {out['name']!r}").get("binary_data")
            outputs.append(RequestedOutput(out["name"], None if binary is None else bool(binary)))
    rid = obj.get("id", "")
    return InferRequest(rid if isinstance(rid, str) else str(rid), inputs, outputs, params)


def http_response(model: str, version: str, req: InferRequest, outs: list[OutTensor]) -> tuple[bytes, int | None]:
    """The ``/infer`` answer: JSON, or JSON header + binary blobs; returns (body, header length or None)."""
    default_binary = bool(req.parameters.get("binary_data_output", False))
    wanted = {o.name: o.binary for o in req.outputs} if req.outputs is not None else {}
    meta: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for t in outs:
        binary = wanted.get(t.name)
        entry: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
        if binary if binary is not None else default_binary:
            blob = t.raw()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = t.json_data()
        meta.append(entry)
    answer: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": meta}
    if req.id:
        answer["id"] = req.id
    header = json.dumps(answer, separators=(",", ":")).encode()
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)


def as_array(t: Tensor, dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    """A fixed-size tensor as an array of its declared shape, after the byte or element count matched it.

    ``raw`` must be exactly ``prod(shape) * itemsize`` bytes of the declared datatype; ``data`` must hold exactly
    ``prod(shape)`` numbers (nested or flat). The caller has checked the shape against the model first.
    """
    count = math.prod(t.shape)
    if t.raw is not None:
        want = count * dtype.itemsize
        if len(t.raw) != want:
            raise InvalidInput(f"input {t.name!r}: {len(t.raw)} bytes of data; shape {list(t.shape)} of "
                               f"{t.datatype} needs {want}")
        return np.frombuffer(t.raw, dtype=dtype).reshape(t.shape)
    if t.data is None:
        raise InvalidInput(f"input {t.name!r} has no data")
    try:
        arr = np.asarray(t.data)
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise InvalidInput(f"input {t.name!r}: data is not a rectangular list of numbers: {exc}") from exc
    if arr.size != count:
        raise InvalidInput(f"input {t.name!r}: {arr.size} values for shape {list(t.shape)} ({count} values)")
    if dtype.kind in "iu" and (arr.dtype == np.bool_ or arr.dtype.kind not in "iu"):
        raise InvalidInput(f"input {t.name!r}: {t.datatype} data must be JSON integers, got {arr.dtype} values")
    if dtype.kind in "iu" and arr.size:
        info = np.iinfo(dtype)
        lo, hi = int(arr.min()), int(arr.max())
        if lo < info.min or hi > info.max:
            raise InvalidInput(f"input {t.name!r}: values {lo}..{hi} do not fit {t.datatype}")
    return arr.astype(dtype).reshape(t.shape)


def as_bytes_elements(t: Tensor) -> list[bytes]:
    """A BYTES tensor's elements: ``prod(shape)`` of them, from length-prefixed raw data, gRPC
    ``bytes_contents``, or base64 strings in JSON."""
    count = math.prod(t.shape)
    if t.raw is not None:
        return deserialize_bytes(t.raw, count, t.name)
    if t.elements is not None:
        items = t.elements
    else:
        flat = _flatten(t.data, MAX_DIMS)  # nested row-major lists, e.g. [[b64], [b64]] for shape [2, 1]
        if flat is None or not all(isinstance(x, str) for x in flat):
            raise InvalidInput(f"input {t.name!r}: BYTES data in JSON must be a list of base64 strings")
        items = []
        for i, text in enumerate(flat):
            try:
                items.append(base64.b64decode(text, validate=True))
            except (binascii.Error, ValueError) as exc:
                raise InvalidInput(f"input {t.name!r}: element {i} is not base64 ({exc}); send binary data or "
                                   "base64 in JSON") from exc
    if len(items) != count:
        raise InvalidInput(f"input {t.name!r}: {len(items)} elements for shape {list(t.shape)}")
    return list(items)


def _flatten(value: Any, depth: int) -> list[Any] | None:
    if not isinstance(value, list):
        return None
    if not any(isinstance(x, list) for x in value):
        return value
    if depth <= 1 or not all(isinstance(x, list) for x in value):
        return None
    out: list[Any] = []
    for x in value:
        inner = _flatten(x, depth - 1)
        if inner is None:
            return None
        out.extend(inner)
    return out
