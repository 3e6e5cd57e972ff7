"""Fixtures for tests/deploy: the chart rendered once per session with default, all-features and CPU values."""

from __future__ import annotations

import pytest

from tests.deploy.deploy_helpers import Rendered, all_features_values, cpu_values, render_chart


@pytest.fixture(scope="session")
def rendered_default() -> Rendered:
    return render_chart(None, "default")


@pytest.fixture(scope="session")
def rendered_all() -> Rendered:
    return render_chart(all_features_values(), "all-features")


@pytest.fixture(scope="session")
def rendered_cpu() -> Rendered:
    return render_chart(cpu_values(), "cpu")
