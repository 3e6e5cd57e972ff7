"""The documented build, push and install commands (docs/deployment.md, the ``images`` block) produce exactly
the image tags the Helm chart pulls, with and without values-cpu.yaml; compose builds the same tags; all carry
the version of pyproject.toml, which is the chart's appVersion.

The block runs in real bash with ``docker`` and ``helm`` replaced by functions that record their arguments."""

from __future__ import annotations

import shlex
import subprocess
import tomllib
from typing import Any

import pytest
import yaml

from tests.deploy.deploy_helpers import (
    CHART,
    COMPOSE_PROFILES,
    REPO,
    compose_config,
    cpu_values,
    render_chart,
)

VERSION = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
REGISTRY = "registry.example.com/ml"


def documented_block() -> str:
    text = (REPO / "docs" / "deployment.md").read_text(encoding="utf-8")
    block = text.split("<!-- images:start -->", 1)[1].split("<!-- images:end -->", 1)[0]
    return block.split("```bash\n", 1)[1].split("```", 1)[0]


@pytest.fixture(scope="module")
def recorded() -> list[list[str]]:
    script = (
        'docker() { printf "docker %s\\n" "$(printf "%q " "$@")"; }\n'
        'helm() { printf "helm %s\\n" "$(printf "%q " "$@")"; }\n'
        "set -euo pipefail\n" + documented_block()
    )
    out = subprocess.run(["bash", "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60, check=True)
    return [shlex.split(line) for line in out.stdout.splitlines()]


def _set_values(helm_args: list[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for i, arg in enumerate(helm_args):
        if arg == "--set":
            key, value = helm_args[i + 1].split("=", 1)
            node = values
            *parents, leaf = key.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
    return values


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def test_chart_app_version_is_the_package_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    assert chart["appVersion"] == VERSION


def test_documented_tags_are_what_the_chart_pulls(recorded: list[list[str]]) -> None:
    builds = {c[c.index("-t") + 1]: c[c.index("--target") + 1] for c in recorded if c[:2] == ["docker", "build"]}
    pushed = {c[2] for c in recorded if c[:2] == ["docker", "push"]}
    assert builds == {f"{REGISTRY}/evotok-serve:{VERSION}-cpu": "cpu", f"{REGISTRY}/evotok-serve:{VERSION}-gpu": "gpu"}
    assert pushed == set(builds), "every built image is pushed"
    installs = [c for c in recorded if c[:2] == ["helm", "install"]]
    assert len(installs) == 1 and installs[0][3] == "deploy/helm/evotok"
    values = _set_values(installs[0])
    for name, extra in (("gpu", {}), ("cpu", cpu_values())):
        rendered = render_chart(_merge(extra, values), f"documented-{name}")
        images = {c["image"] for d in rendered.docs() if d["kind"] == "Deployment"
                  for c in d["spec"]["template"]["spec"]["containers"]}
        images.discard(None)
        assert images and images <= pushed, (name, images, pushed)
        worker = rendered.find("Deployment", "-worker")["spec"]["template"]["spec"]["containers"][0]["image"]
        assert worker.endswith(f"-{name}"), worker


def test_compose_builds_the_same_tags() -> None:
    for files in (("docker-compose.yml",), ("docker-compose.yml", "docker-compose.cpu.yml")):
        services = compose_config(files, *COMPOSE_PROFILES)["services"]
        for name in ("evotok", "evotok-1", "api", "worker", "worker-1"):
            target = services[name]["build"]["target"]
            assert services[name]["image"] == f"evotok-serve:{VERSION}-{target}", (files, name)
