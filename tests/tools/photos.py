"""The offline photo set on disk: scikit-image / scikit-learn photos in nested folders, mixed formats, plus
two unreadable files (a truncated JPEG and an RGBA PNG, which the service refuses) and a non-image file."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image

GOOD = {
    "people/astronaut.jpg": skimage.data.astronaut,
    "animals/cats/chelsea.png": skimage.data.chelsea,
    "food/coffee.webp": skimage.data.coffee,
    "space/rocket.jpg": skimage.data.rocket,
    "space/hubble.png": lambda: skimage.data.hubble_deep_field()[::2, ::2],
    "lab/ihc.jpg": skimage.data.immunohistochemistry,
    "street/motorcycle.jpg": lambda: skimage.data.stereo_motorcycle()[0],
    "grey/camera.png": skimage.data.camera,
    "grey/moon.jpg": skimage.data.moon,
    "grey/coins.png": skimage.data.coins,
    "textures/brick.png": skimage.data.brick,
    "textures/colorwheel.png": skimage.data.colorwheel,
}
BAD = ("broken/alpha.png", "broken/truncated.jpg")


def _save(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(np.ascontiguousarray(arr))
    fmt = {".jpg": "JPEG", ".png": "PNG", ".webp": "WEBP"}[path.suffix]
    img.save(path, format=fmt, **({"quality": 90} if fmt != "PNG" else {}))


def write_photo_set(root: Path) -> dict[str, tuple[int, int]]:
    """Write the set under ``root``; returns {relative path: (W, H)} of the readable images."""
    sizes = {}
    for rel, load in GOOD.items():
        arr = load()
        if arr.dtype != np.uint8:
            arr = (arr * 255).astype(np.uint8) if arr.max() <= 1 else arr.astype(np.uint8)
        _save(arr, root / rel)
        sizes[rel] = (arr.shape[1], arr.shape[0])
    rgba = np.dstack([skimage.data.chelsea(), np.full((300, 451), 200, np.uint8)])
    _save(rgba, root / "broken/alpha.png")
    buf = io.BytesIO()
    Image.fromarray(skimage.data.coffee()).save(buf, format="JPEG")
    (root / "broken/truncated.jpg").write_bytes(buf.getvalue()[:800])
    (root / "README.txt").write_text("not an image\n")
    return sizes
