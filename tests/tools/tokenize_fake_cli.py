"""``python -m tests.tools.tokenize_fake_cli ARGS``: the real ``evotok tokenize`` CLI with the fake runtime.

The backend is the fake runtime shaped like the shipped model; ``EVOTOK_TEST_DELAY_S`` slows every batch so a
test can kill the run mid-way. The factory is a picklable partial, so Ray actors build the same backend."""

from __future__ import annotations

import os
import sys
from functools import partial

from evotok.tokenize.cli import main
from tests.tools.tokenize_data import fake_backend

if __name__ == "__main__":
    delay = float(os.environ.get("EVOTOK_TEST_DELAY_S", "0"))
    sys.exit(main(sys.argv[1:], backend_factory=partial(fake_backend, delay)))
