"""The per-chunk work every engine does: read a chunk's samples, then encode the readable ones.

``read_chunk`` runs where the source is (in process, or in a Ray read task); ``encode_inputs`` runs where the
model is (in process, or in a Ray actor). Both are pure functions of their inputs, so engines agree byte for
byte.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from evotok.tokenize.sources import Sample, Source
from evotok.tools.backends import CodesBackend, ImageFailure

Input = tuple["bytes | ImageFailure", "list[int] | None"]  # (encoded image or failure, original [W, H])
Result = tuple["npt.NDArray[np.uint16] | ImageFailure", "list[int] | None"]


def original_size(data: bytes) -> list[int] | None:
    """(W, H) from the header, or None if PIL cannot even read the header."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            return [int(img.size[0]), int(img.size[1])]
    except Exception:  # any unreadable header: the backend reports the precise failure
        return None


def read_chunk(source: Source, samples: Sequence[Sample], pre: Sequence[ImageFailure | None]) -> list[Input]:
    """Bytes (or failure) and original size per sample; ``pre`` holds failures known from the plan
    (duplicate keys), whose bytes are not read."""
    todo = [k for k, p in enumerate(pre) if p is None]
    data = dict(zip(todo, source.read([samples[k] for k in todo]), strict=True))
    out: list[Input] = []
    for k, p in enumerate(pre):
        d = p if p is not None else data[k]
        out.append((d, None if isinstance(d, ImageFailure) else original_size(d)))
    return out


def encode_inputs(backend: CodesBackend, inputs: Sequence[Input]) -> list[Result]:
    """Codes ``(h, w, D)`` uint16 or a failure per input, same order."""
    send = [k for k, (d, _) in enumerate(inputs) if not isinstance(d, ImageFailure)]
    blobs = [inputs[k][0] for k in send]
    encoded = dict(zip(send, backend.encode_files(blobs), strict=True))  # type: ignore[arg-type]
    out: list[Result] = []
    for k, (d, size) in enumerate(inputs):
        r = encoded.get(k, d)
        assert not isinstance(r, bytes), "every readable input was encoded"
        out.append((r, size))
    return out
