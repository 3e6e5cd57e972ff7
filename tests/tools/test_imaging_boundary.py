"""The offline tools use the pure image rule (``evotok.imaging``), never the HTTP layer; the service raises the
same codes through its one error table."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from evotok.imaging import IMAGE_ERROR_CODES, ImageError
from evotok.tools.backends import IMAGE_ERROR_CODES as TOOL_CODES


def test_tools_encode_without_importing_the_service() -> None:
    script = """
import io, sys
import numpy as np
from PIL import Image
from evotok.export.fake import FakeRuntime
from evotok.tools.backends import LocalBackend
buf = io.BytesIO(); Image.fromarray(np.zeros((40, 50, 4), np.uint8)).save(buf, format="PNG")
out = LocalBackend(FakeRuntime()).encode_files([buf.getvalue(), b"not an image", b"GIF89a" + b"x" * 10])
assert out[0].shape[-1] > 0, out[0]
print(out[1].code, out[2].code)
leaked = sorted(m for m in sys.modules if m.startswith(("evotok.service", "fastapi", "starlette")))
assert not leaked, leaked
"""
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split()[0] == "invalid_image"


def test_image_codes_are_the_service_codes() -> None:
    from evotok.service.errors import ERROR_TABLE
    from evotok.service.imaging import http_error

    table = {code: status for status, code in ERROR_TABLE.values()}
    assert set(TOOL_CODES) == set(IMAGE_ERROR_CODES)
    for code in IMAGE_ERROR_CODES:
        err = http_error(ImageError(code, "m"))
        assert (err.code, err.status, err.message) == (code, table[code], "m")


def test_service_imaging_raises_the_table() -> None:
    from evotok.service.errors import InvalidImage, PayloadTooLarge
    from evotok.service.imaging import prepare_image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(buf, format="PNG")
    with pytest.raises(InvalidImage):
        prepare_image(b"nope", 16, "center-crop", 10**6)
    with pytest.raises(PayloadTooLarge):
        prepare_image(buf.getvalue(), 16, "center-crop", 100)
