"""The offline photo set (``evotok data``) and its fixed train / held-out split.

Sources: real photographs inside five Debian packages (extracted with
``apt-get download`` + ``dpkg -x``, no installation needed) and the colour photos bundled in the
scikit-image, scikit-learn and matplotlib wheels. The held-out split (5 palapeli-data photos + 3 opencv-doc
photos) is fixed here in code and never trained on; ``data/split.json`` records both lists with hashes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PLASMA = ["FallenLeaf", "Path", "DarkestHour", "summer_1am", "EveningGlow", "Kite", "ColorfulCups",
          "OneStandsOut", "ColdRipple", "BytheWater"]  # "Grey" is greyscale: left out
MATE = ["Aqua", "Blinds", "Dune", "FreshFlower", "Garden", "GreenMeadow", "LadyBird", "RainDrops", "Storm",
        "TwoWings", "Wood", "YellowFlower"]
PALAPELI = ["castle-maintenon", "cincinnati-bridge", "citrus-fruits", "european-honey-bee", "panther-chameleon-female"]
OPENCV = ["aero1", "aero3", "aloeL", "apple", "baboon", "board", "building", "butterfly", "fruits", "graf1",
          "home", "leuvenA", "messi5", "orange", "rubberwhale1", "smarties", "squirrel_cls", "stuff", "ela_original"]
HELD_OUT_OPENCV = ["baboon", "fruits", "butterfly"]

DEB_FILES: dict[str, list[str]] = {
    "plasma-workspace-wallpapers": [f"usr/share/wallpapers/{n}/contents/images/2560x1600.jpg" for n in PLASMA],
    "mate-backgrounds": [f"usr/share/backgrounds/mate/nature/{n}.jpg" for n in MATE],
    "lomiri-wallpapers-20.04": [
        "usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg",
        "usr/share/backgrounds/Infinite-Sea_by_Aury88.jpg",
    ],
    "palapeli-data": [f"usr/share/palapeli/collection/{n}.jpg" for n in PALAPELI],
    "opencv-doc": [f"usr/share/doc/opencv-doc/examples/data/{n}.jpg" for n in OPENCV],
}


@dataclass(frozen=True)
class Split:
    train: list[Path]
    held_out: list[Path]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _extract_deb(package: str, members: list[str], out: Path, cache: Path) -> list[Path]:
    cache.mkdir(parents=True, exist_ok=True)
    debs = sorted(cache.glob(f"{package}_*.deb"))
    if not debs:
        subprocess.run(["apt-get", "download", package], cwd=cache, check=True, capture_output=True)
        debs = sorted(cache.glob(f"{package}_*.deb"))
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["dpkg", "-x", str(debs[-1]), tmp], check=True)
        written = []
        for member in members:
            src = Path(tmp) / member
            if not src.exists():  # a few OpenCV samples are PNG
                src = src.with_suffix(".png")
            if not src.exists():
                log.warning("%s: %s not found in the package, skipped", package, member)
                continue
            name = src.stem if package != "plasma-workspace-wallpapers" else src.parents[2].name
            dst = out / package / f"{name}{src.suffix}"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src.resolve(), dst)
            written.append(dst)
    return written


def _wheel_photos(out: Path) -> list[Path]:
    import matplotlib
    import skimage
    import sklearn

    sk = Path(skimage.__file__).parent / "data"
    sources = [sk / n for n in ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "hubble_deep_field.jpg",
                                "motorcycle_left.png", "immunohistochemistry.png", "retina.jpg")]
    sources += [Path(sklearn.__file__).parent / "datasets" / "images" / n for n in ("china.jpg", "flower.jpg")]
    sources.append(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")
    written = []
    for src in sources:
        if not src.exists():
            continue
        dst = out / "wheels" / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        written.append(dst)
    return written


def is_held_out(path: Path) -> bool:
    return path.parent.name == "palapeli-data" or (path.parent.name == "opencv-doc" and path.stem in HELD_OUT_OPENCV)


def prepare(root: Path = Path("data"), with_debian: bool = True) -> Path:
    """Install the photo set under ``root/photos`` and write ``root/split.json``; returns the split path."""
    photos = root / "photos"
    files = _wheel_photos(photos)
    if with_debian:
        for package, members in DEB_FILES.items():
            files += _extract_deb(package, members, photos, root / "debs")
    files = sorted(set(files))
    split = {
        "note": "held_out is never trained on; fixed in evotok.model.train.photos",
        "train": [{"path": str(p.relative_to(root)), "sha256": _sha(p)} for p in files if not is_held_out(p)],
        "held_out": [{"path": str(p.relative_to(root)), "sha256": _sha(p)} for p in files if is_held_out(p)],
    }
    out = root / "split.json"
    out.write_text(json.dumps(split, indent=2) + "\n")
    log.info("%d train photos, %d held-out photos -> %s", len(split["train"]), len(split["held_out"]), out)
    return out


def load_split(split_path: Path) -> Split:
    data = json.loads(split_path.read_text())
    root = split_path.parent
    return Split(train=[root / e["path"] for e in data["train"]], held_out=[root / e["path"] for e in data["held_out"]])
