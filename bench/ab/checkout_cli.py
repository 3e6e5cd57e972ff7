"""Run the ``evotok`` CLI of another checkout with this environment: ``python checkout_cli.py ROOT serve ...``.

For side-by-side measurements against an earlier commit (``ab_serve.sh``): a module finder placed ahead of the
editable install maps the ``evotok`` packages to ``ROOT``'s folders, as ``pyproject.toml`` maps them here.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType
from typing import Any

FOLDERS = {"evotok": "evotok", "evotok._shipped": "weights", "evotok.benchmarks": "bench", "evotok.export": "export",
           "evotok.model": "model", "evotok.service": "service"}


class CheckoutFinder(importlib.abc.MetaPathFinder):
    def __init__(self, root: str) -> None:
        self.mapping = {name: f"{root}/{folder}" for name, folder in FOLDERS.items()}

    def find_spec(self, fullname: str, path: Any = None, target: ModuleType | None = None
                  ) -> importlib.machinery.ModuleSpec | None:
        folder = self.mapping.get(fullname)
        if folder is None:
            return None
        return importlib.util.spec_from_file_location(fullname, f"{folder}/__init__.py",
                                                      submodule_search_locations=[folder])


def main() -> int:
    root, *args = sys.argv[1:]
    sys.meta_path.insert(0, CheckoutFinder(root))
    from evotok.cli import main as cli_main

    sys.argv = ["evotok", *args]
    return int(cli_main() or 0)


if __name__ == "__main__":
    raise SystemExit(main())
