"""The HTTP side of image preprocessing: ``evotok.imaging`` (the pure rule, shared with the offline tools) with
its ``ImageError`` raised as the service's error table (``errors.py``), by code:

================================ ======================================
``ImageError.code``              HTTP
================================ ======================================
``invalid_image``                422 ``invalid_image``
``invalid_input``                422 ``invalid_input``
``payload_too_large``            413 ``payload_too_large``
``unsupported_media_type``       415 ``unsupported_media_type``
================================ ======================================

The rule itself (formats, conversions, orientation, limits, fitting) is documented in ``evotok/imaging.py``
and docs/service.md.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from evotok import imaging as pure
from evotok.imaging import (
    IMAGE_CONTENT_TYPES,
    IMAGE_ERROR_CODES,
    RESIZE_MODES,
    ImageError,
    ResizeMode,
    encode_png,
    sniff_format,
)
from evotok.service.errors import ServiceError, error_of_code

__all__ = ["IMAGE_CONTENT_TYPES", "IMAGE_ERROR_CODES", "RESIZE_MODES", "ResizeMode", "encode_png", "fit_to_model",
           "http_error", "load_image", "open_checked", "parse_background", "prepare_image", "prepare_opened",
           "sniff_format"]

P = ParamSpec("P")
T = TypeVar("T")


def http_error(exc: ImageError) -> ServiceError:
    """The error-table exception for an ``ImageError`` (same code, same message)."""
    return error_of_code(exc.code, exc.message)


def _raising_http(fn: Callable[P, T]) -> Callable[P, T]:
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        except ImageError as exc:
            raise http_error(exc) from exc

    return wrapper


prepare_image = _raising_http(pure.prepare_image)
open_checked = _raising_http(pure.open_checked)
prepare_opened = _raising_http(pure.prepare_opened)
load_image = _raising_http(pure.load_image)
fit_to_model = _raising_http(pure.fit_to_model)
parse_background = _raising_http(pure.parse_background)
