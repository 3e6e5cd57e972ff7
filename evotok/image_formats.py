"""The accepted image containers: one table, sniffed from the bytes (the Content-Type is not trusted).

``FORMATS`` maps the sniffed container name to the Pillow format names that may open it and the media types a
raw body may be sent as. HEIC/HEIF is served when the optional ``pillow-heif`` plugin is installed (extra
``images``), AVIF when Pillow was built with libavif (the PyPI wheels are); otherwise those containers get 415
with a message saying why. ICO and anything else Pillow knows are refused (415); bytes that are no known
image are 422 ``invalid_image``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from PIL import features

log = logging.getLogger(__name__)


def _heif_plugin() -> bool:
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return False
    register_heif_opener()
    return True


HEIF_AVAILABLE = _heif_plugin()
AVIF_AVAILABLE = bool(features.check("avif"))


@dataclass(frozen=True)
class Container:
    pillow: tuple[str, ...]  # Pillow format names allowed to open it (no other plugin is tried)
    media_types: tuple[str, ...]  # raw-body Content-Types
    served: bool = True
    why_not: str = ""


FORMATS: dict[str, Container] = {
    "PNG": Container(("PNG",), ("image/png", "image/apng")),
    "JPEG": Container(("JPEG",), ("image/jpeg",)),
    "WEBP": Container(("WEBP",), ("image/webp",)),
    "GIF": Container(("GIF",), ("image/gif",)),
    "BMP": Container(("BMP",), ("image/bmp",)),
    "TIFF": Container(("TIFF",), ("image/tiff",)),
    "AVIF": Container(("AVIF",), ("image/avif",), AVIF_AVAILABLE, "this Pillow was built without libavif"),
    "HEIF": Container(("HEIF",), ("image/heic", "image/heif"), HEIF_AVAILABLE,
                      "install the optional pillow-heif plugin (extra `images`) to serve HEIC/HEIF"),
    "ICO": Container(("ICO",), (), False, "icons are not served"),
}

SERVED = tuple(name for name, c in FORMATS.items() if c.served)
IMAGE_CONTENT_TYPES: tuple[str, ...] = tuple(t for name in SERVED for t in FORMATS[name].media_types)

_AVIF_BRANDS = (b"avif", b"avis")
_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1")


def sniff_format(data: bytes) -> str | None:
    """The container from magic bytes: a key of ``FORMATS``, or None for bytes that are no known image."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:2] == b"BM":
        return "BMP"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if data[:4] == b"\x00\x00\x01\x00":
        return "ICO"
    if len(data) >= 12 and data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in _AVIF_BRANDS:
            return "AVIF"
        if brand in _HEIF_BRANDS:
            return "HEIF"
    return None


def served_names() -> str:
    return ", ".join(SERVED)
