"""Print the requirements of evotok-serve for a set of extras, read from ``pyproject.toml``.

Used by the Dockerfile to install the dependency layer *before* the source is copied, so that a code
change does not reinstall torch. Standard library only (runs before anything is installed).

Usage::

    python requirements.py pyproject.toml cpu,torch > requirements.txt

Refuses ``cpu`` together with ``gpu``: onnxruntime and onnxruntime-gpu overwrite each other
(see ``docs/deployment.md`` and ``evotok/tools/check_env.py``).
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

EXCLUSIVE = frozenset({"cpu", "gpu"})


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    """Core dependencies plus those of ``extras``, in file order, without duplicates."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    unknown = [e for e in extras if e not in optional]
    if unknown:
        raise SystemExit(f"unknown extra(s) {unknown}; known: {sorted(optional)}")
    if set(extras) >= EXCLUSIVE:
        raise SystemExit("extras 'cpu' and 'gpu' are mutually exclusive (onnxruntime vs onnxruntime-gpu)")
    out: list[str] = []
    for req in [*project.get("dependencies", []), *(r for e in extras for r in optional[e])]:
        if req not in out:
            out.append(req)
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        sys.stderr.write(__doc__ or "")
        return 2
    extras = [e.strip() for e in argv[1].split(",") if e.strip()]
    sys.stdout.write("\n".join(requirements(Path(argv[0]), extras)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
