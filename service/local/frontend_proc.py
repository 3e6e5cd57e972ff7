"""A front-end process: the FastAPI app with a ``LocalBatcher`` under uvicorn, on its own ``SO_REUSEPORT`` socket.

``python -m evotok.service.local.frontend_proc`` (started by ``supervisor.py``; the runtime socket in
``EVOTOK_LOCAL_SOCKET``). Every front end binds its own listening socket to the one HTTP port with
``SO_REUSEPORT``, so the kernel spreads new connections over the front ends evenly (one socket shared by all, as
uvicorn's ``--workers`` does, lets one process accept most connections) and a front end that dies takes only its
own connections with it. HTTP, image decoding, validation and answer encoding happen here; the batching core
runs in the runtime process.
"""

from __future__ import annotations

import os
import socket
import sys


def listen_socket(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A listening TCP socket on ``host:port`` shared with the other front ends (``SO_REUSEPORT``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def main() -> int:
    import uvicorn

    from evotok.service.app import create_app
    from evotok.service.cli import uvicorn_options
    from evotok.service.local.batcher import LocalBatcher
    from evotok.service.settings import Settings
    from evotok.service.startup import configure_logging

    path = os.environ.get("EVOTOK_LOCAL_SOCKET")
    if not path:
        sys.stderr.write("evotok front end: EVOTOK_LOCAL_SOCKET is not set (started by `evotok serve`)\n")
        return 2
    settings = Settings()
    configure_logging(settings)
    sock = listen_socket(settings.host, settings.port)
    app = create_app(settings, batcher=LocalBatcher(settings, path))
    server = uvicorn.Server(uvicorn.Config(app, **uvicorn_options(settings)))
    server.run(sockets=[sock])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
