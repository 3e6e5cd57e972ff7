"""``bench/ab/checkout_cli.py``: the ``evotok`` packages come from the other checkout, nothing else changes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_packages_map_to_the_other_checkout(tmp_path: Path) -> None:
    for folder, mark in (("evotok", "top"), ("service", "svc"), ("export", "exp")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "__init__.py").write_text(f"MARK = {mark!r}\n")
    (tmp_path / "service" / "extra.py").write_text("MARK = 'submodule'\n")
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import checkout_cli as c; "
        "sys.meta_path.insert(0, c.CheckoutFinder(sys.argv[2])); "
        "import evotok, evotok.service, evotok.service.extra, evotok.export, json; "
        "print(evotok.MARK, evotok.service.MARK, evotok.service.extra.MARK, evotok.export.MARK, json.__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(REPO / "bench" / "ab"), str(tmp_path)],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["top", "svc", "submodule", "exp", "json"]
