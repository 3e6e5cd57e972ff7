"""One real uvicorn server (fake runtime shaped like the shipped model) shared by the client tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.client.server import Server, running_server


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("uvicorn")) as s:
        yield s
