"""Wire encoding of the Redis queue: arrays as raw bytes + dtype/shape, malformed entries rejected."""

from __future__ import annotations

import numpy as np
import pytest

from evotok.service.redis_protocol import (
    Keys,
    ProtocolError,
    pack_array,
    parse_reply,
    parse_work_entry,
    redis_url,
    unpack_array,
)


@pytest.mark.parametrize(
    "arr",
    [
        np.arange(64 * 64 * 3, dtype=np.uint8).reshape(64, 64, 3),
        np.arange(4 * 4 * 16, dtype=np.uint16).reshape(4, 4, 16) * 4000,
        np.linspace(-1, 1, 16 * 8, dtype=np.float32).reshape(16, 8),
    ],
)
def test_array_roundtrip(arr: np.ndarray) -> None:
    wire = pack_array(arr)
    back = unpack_array(wire.dtype.encode(), wire.shape.encode(), wire.data)
    assert back.dtype == arr.dtype and back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)


def test_non_contiguous_and_disallowed_dtypes() -> None:
    arr = np.arange(32, dtype=np.uint16).reshape(4, 8)[:, ::2]
    wire = pack_array(arr)
    np.testing.assert_array_equal(unpack_array(wire.dtype, wire.shape, wire.data), arr)
    with pytest.raises(ProtocolError):
        pack_array(np.zeros(3, np.int64))
    with pytest.raises(ProtocolError):
        unpack_array("|O", "3", b"abc")  # object arrays (pickle) never cross the wire


@pytest.mark.parametrize(
    ("dtype", "shape", "data"),
    [("<u2", "2,2", b"\x00" * 7), ("<u2", "2,x", b"\x00" * 8), ("<u2", "-2,-2", b"\x00" * 8), ("<i8", "1", b"\x00" * 8)],
)
def test_unpack_rejects_inconsistent_fields(dtype: str, shape: str, data: bytes) -> None:
    with pytest.raises(ProtocolError):
        unpack_array(dtype, shape, data)


def test_parse_work_entry_and_reply() -> None:
    keys = Keys("evotok")
    codes = np.ones((4, 4, 2), np.uint16)
    wire = pack_array(codes)
    fields = {b"rid": b"r1", b"reply": b"evotok:reply:a", b"deadline_ms": b"1000", b"enq_ms": b"900",
              b"dtype": wire.dtype.encode(), b"shape": wire.shape.encode(), b"data": wire.data}
    item = parse_work_entry(keys, keys.work("decode"), "1-0", fields, deliveries=2)
    assert (item.op, item.request_id, item.deadline_ms, item.nbytes, item.deliveries) == ("decode", "r1", 1000, 64, 2)
    with pytest.raises(ProtocolError):
        parse_work_entry(keys, keys.work("decode"), "1-0", {k: v for k, v in fields.items() if k != b"rid"})
    with pytest.raises(ProtocolError):
        parse_work_entry(keys, "evotok:req:nonsense", "1-0", fields)
    reply = parse_reply({b"rid": b"r1", b"status": b"ok", b"message": b"", b"dtype": wire.dtype.encode(),
                         b"shape": wire.shape.encode(), b"data": wire.data})
    assert reply.result is not None and reply.result.shape == (4, 4, 2)
    err = parse_reply({b"rid": b"r2", b"status": b"backend_error", b"message": b"boom"})
    assert (err.status, err.message, err.result) == ("backend_error", "boom", None)


def test_tls_url() -> None:
    assert redis_url("redis://h:6379/0", tls=True) == "rediss://h:6379/0"
    assert redis_url("rediss://h:6379/0", tls=False) == "rediss://h:6379/0"
    assert redis_url("redis://h:6379/0", tls=False) == "redis://h:6379/0"
