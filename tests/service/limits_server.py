"""``python -m tests.service.limits_server --host H --port P``: the fake-runtime app served exactly like
``evotok serve`` serves the real one (uvicorn options from Settings: connection limit, keep-alive, header and
body timeouts). ``EVOTOK_*`` variables configure it; ``EVOTOK_TEST_FAKE_DELAY_S`` slows each batch."""

from __future__ import annotations

import argparse

from evotok.service.cli import run_uvicorn
from evotok.service.settings import Settings
from tests.service.fake_app import build


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    settings = Settings(host=args.host, port=args.port, log_level="warning")
    run_uvicorn(build(), settings)


if __name__ == "__main__":
    main()
