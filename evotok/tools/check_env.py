"""Installation guard: onnxruntime and onnxruntime-gpu must never be installed together.

Both distributions own the ``onnxruntime/`` directory; the one installed last silently overwrites the
other's files (GPU providers vanish, or uninstalling one breaks the other).
"""

from __future__ import annotations

import importlib.metadata as md
import sys


def installed(dist: str) -> bool:
    try:
        md.version(dist)
    except md.PackageNotFoundError:
        return False
    return True


def check() -> list[str]:
    problems = []
    if installed("onnxruntime") and installed("onnxruntime-gpu"):
        problems.append(
            "both 'onnxruntime' and 'onnxruntime-gpu' are installed; they overwrite each other. "
            "Install exactly one extra: evotok-serve[cpu] or evotok-serve[gpu] "
            "(repair: pip uninstall -y onnxruntime onnxruntime-gpu && pip install 'evotok-serve[gpu]')."
        )
    return problems


def main() -> int:
    problems = check()
    for p in problems:
        sys.stderr.write(f"evotok: {p}\n")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
