"""Every EVOTOK_* name used by the deployment files is a real Settings field, and the chart maps 1:1.

``Settings`` (evotok/service/settings.py) is the single definition of the service's configuration; the
compose files, the env example, the Dockerfile, the entrypoint and the chart only ever *use* its names.
"""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import pytest
import yaml

from evotok.service.settings import Settings
from tests.deploy.deploy_helpers import (
    CHART,
    COMPOSE_PROFILES,
    REPO,
    Rendered,
    compose_config,
    env_example,
)

FIELDS = set(Settings.model_fields)
ENV_NAMES = {f"EVOTOK_{f.upper()}" for f in FIELDS}
# files whose EVOTOK_* names must all be Settings fields
DEPLOY_FILES = [
    "docker-compose.yml",
    "docker-compose.cpu.yml",
    "Dockerfile",
    "deploy/evotok.env.example",
    "deploy/docker/entrypoint.sh",
    "deploy/docker/healthcheck.py",
    "deploy/smoke.sh",
    "deploy/smoke_client.py",
    *sorted(str(p.relative_to(REPO)) for p in (CHART / "templates").iterdir()),
    str((CHART / "values.yaml").relative_to(REPO)),
]
_NAME = re.compile(r"\bEVOTOK_[A-Z0-9_]+\b")


def test_field_list_is_not_empty() -> None:
    assert {"backend", "queue", "redis_url", "redis_password", "worker_metrics_port"} <= FIELDS


@pytest.mark.parametrize("path", DEPLOY_FILES)
def test_every_evotok_variable_is_a_settings_field(path: str) -> None:
    text = (REPO / path).read_text(encoding="utf-8")
    # the chart builds names as EVOTOK_<KEY> from values; literal ones must still exist
    unknown = sorted(set(_NAME.findall(text)) - ENV_NAMES)
    assert unknown == [], f"{path}: not fields of Settings: {unknown}"


def test_chart_settings_map_one_to_one() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    assert set(values["settings"]) == FIELDS, (
        f"values.settings vs Settings: missing {sorted(FIELDS - set(values['settings']))}, "
        f"extra {sorted(set(values['settings']) - FIELDS)}"
    )
    for role in ("api", "worker"):
        assert set(values[role]["settings"]) <= FIELDS, role


def test_values_schema_is_generated_from_settings() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "deploy" / "helm" / "schema.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def _settings_from_env(env: dict[str, str]) -> Settings:
    """Build Settings exactly as a container would: from EVOTOK_* environment variables only."""
    mp = pytest.MonkeyPatch()
    try:
        import os

        for name in list(os.environ):
            if name.startswith("EVOTOK_"):
                mp.delenv(name)
        for name, value in env.items():
            mp.setenv(name, value)
        return Settings()
    finally:
        mp.undo()


@pytest.mark.parametrize("fixture", ["rendered_default", "rendered_all"])
def test_rendered_chart_env_parses_into_settings(fixture: str, request: pytest.FixtureRequest) -> None:
    import base64

    rendered: Rendered = request.getfixturevalue(fixture)
    secret = {k: base64.b64decode(v).decode() for k, v in rendered.find("Secret")["data"].items()}
    values: dict[str, Any] = {}
    for role in ("api", "worker"):
        cm = rendered.find("ConfigMap", f"-{role}")["data"]
        # together with the Secret the pod environment names every field exactly once
        assert set(cm) | set(secret) == ENV_NAMES and not set(cm) & set(secret), role
        s = _settings_from_env({**cm, **secret})
        values[role] = s
    assert values["api"].queue == "redis" and values["worker"].queue == "redis"
    assert values["worker"].backend == "tensorrt" and values["worker"].device == "cuda"
    assert values["api"].host == "0.0.0.0"
    assert values["worker"].redis_password is not None
    assert values["api"].redis_url == values["worker"].redis_url


def test_rendered_chart_keeps_large_integers_integral(rendered_default: Rendered) -> None:
    """Helm reads numbers as float64; 268435456 must not become 2.68435456e+08."""
    cm = rendered_default.find("ConfigMap", "-api")["data"]
    assert cm["EVOTOK_REDIS_MAX_BYTES"] == "268435456"
    assert cm["EVOTOK_MAX_IMAGE_PIXELS"] == "40000000"


def _service_settings(svc: dict[str, Any]) -> Settings:
    """The Settings a resolved compose service's EVOTOK_* environment gives."""
    return _settings_from_env({k: str(v) for k, v in svc["environment"].items() if k.startswith("EVOTOK_")})


@pytest.mark.parametrize(
    "files",
    [("docker-compose.yml",), ("docker-compose.yml", "docker-compose.cpu.yml")],
    ids=["default", "cpu"],
)
def test_compose_env_parses_into_settings(files: tuple[str, ...]) -> None:
    services = compose_config(files, *COMPOSE_PROFILES)["services"]
    # the single-host topology: in-process queue, auto front ends, no Redis
    for name in ("evotok", "evotok-1"):
        s = _service_settings(services[name])
        assert s.queue == "inprocess" and s.frontends == 0 and s.workers == 1, name
        assert s.redis_password is None and s.host == "0.0.0.0", name
        assert [k.get_secret_value() for k in s.api_keys] == ["change-me-to-a-long-random-token"], name
    for name in ("api", "worker", "worker-1"):
        s = _service_settings(services[name])
        assert s.queue == "redis" and s.redis_url == "redis://redis:6379/0", name
        assert s.redis_password is not None
        assert s.redis_password.get_secret_value() == env_example()["EVOTOK_REDIS_PASSWORD"]
    api = _service_settings(services["api"])
    assert [k.get_secret_value() for k in api.api_keys] == ["change-me-to-a-long-random-token"]


# --- one source of defaults: Settings -------------------------------------------------------------------------
# A deployment file may differ from Settings' defaults only in these fields, each for the reason given; every
# other value the compose files, the chart and the env example carry must equal the default (a changed default
# in service/settings.py fails here until the deployment files follow).
DEPLOYMENT_FIELDS = {
    "weights": "the model's path inside the image",
    "cache_dir": "the engine cache volume",
    "queue": "API and workers (profile `queue`) are separate processes that talk through Redis",
    "redis_url": "the deployment's Redis",
    "redis_password": "a secret",
    "api_keys": "a secret",
    "host": "listen on the container/pod network, not loopback",
    "log_json": "log collectors read JSON lines",
}
# What makes a process run the model on a GPU (compose `evotok` and `worker`, the chart's worker.settings):
# TensorRT fp16, whose codes agree with the fp32 reference at 0.99 rather than bit for bit.
GPU_WORKER_FIELDS = {"backend", "device", "precision", "self_test_threshold"}
# The documented CPU layout (docker-compose.cpu.yml, values-cpu.yaml): one single-thread worker per core.
CPU_WORKER_FIELDS = {"threads"}


def _defaults() -> Settings:
    return _settings_from_env({})


def _drift(s: Settings, allowed: set[str]) -> dict[str, tuple[Any, Any]]:
    """{field: (deployed, default)} for every field outside ``allowed`` that differs from the default."""
    got, want = s.model_dump(), _defaults().model_dump()
    return {k: (got[k], want[k]) for k in FIELDS - allowed if got[k] != want[k]}


def _role_settings(rendered: Rendered, role: str) -> Settings:
    import base64

    secret = {k: base64.b64decode(v).decode() for k, v in rendered.find("Secret")["data"].items()}
    return _settings_from_env({**rendered.find("ConfigMap", f"-{role}")["data"], **secret})


def test_chart_defaults_are_settings_defaults(rendered_default: Rendered) -> None:
    assert _drift(_role_settings(rendered_default, "api"), set(DEPLOYMENT_FIELDS)) == {}
    worker = _role_settings(rendered_default, "worker")
    assert _drift(worker, set(DEPLOYMENT_FIELDS) | GPU_WORKER_FIELDS) == {}
    assert (worker.backend, worker.device, worker.precision) == ("tensorrt", "cuda", "fp16")


def test_chart_cpu_values_follow_the_cpu_layout(rendered_cpu: Rendered) -> None:
    assert _drift(_role_settings(rendered_cpu, "api"), set(DEPLOYMENT_FIELDS)) == {}
    worker = _role_settings(rendered_cpu, "worker")
    assert _drift(worker, set(DEPLOYMENT_FIELDS) | CPU_WORKER_FIELDS) == {}
    assert (worker.backend, worker.device, worker.precision, worker.threads) == ("onnxruntime", "cpu", "fp32", 1)
    pod = rendered_cpu.find("Deployment", "-worker")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert "nvidia.com/gpu" not in str(container["resources"]) and not pod.get("nodeSelector")
    assert container["resources"]["limits"]["cpu"] == "1"  # one core per single-thread worker


def _compose_env(files: tuple[str, ...], service: str) -> Settings:
    return _service_settings(compose_config(files, *COMPOSE_PROFILES)["services"][service])


def test_compose_defaults_are_settings_defaults() -> None:
    base = ("docker-compose.yml",)
    assert _drift(_compose_env(base, "api"), set(DEPLOYMENT_FIELDS)) == {}
    for name in ("worker", "worker-1", "evotok", "evotok-1"):
        s = _compose_env(base, name)
        assert _drift(s, set(DEPLOYMENT_FIELDS) | GPU_WORKER_FIELDS) == {}, name
        assert (s.backend, s.device, s.precision) == ("tensorrt", "cuda", "fp16")
    # `evotok` keeps Settings' queue and front ends (inprocess, 0 = auto), so the drift check covers them
    assert _compose_env(base, "evotok").queue == _defaults().queue == "inprocess"


def test_cpu_compose_evotok_is_settings_defaults() -> None:
    """On a CPU host the single-host service is Settings' defaults but for the deployment fields: ONNX Runtime
    CPU fp32, auto front ends and auto runtime lanes (one single-thread call per core)."""
    files = ("docker-compose.yml", "docker-compose.cpu.yml")
    for name in ("evotok", "evotok-1"):
        assert _drift(_compose_env(files, name), set(DEPLOYMENT_FIELDS)) == {}, name


def test_cpu_compose_runs_single_thread_workers() -> None:
    files = ("docker-compose.yml", "docker-compose.cpu.yml")
    assert _drift(_compose_env(files, "api"), set(DEPLOYMENT_FIELDS)) == {}
    worker = _compose_env(files, "worker")
    assert _drift(worker, set(DEPLOYMENT_FIELDS) | CPU_WORKER_FIELDS) == {}
    assert (worker.backend, worker.device, worker.threads) == ("onnxruntime", "cpu", 1)
    cfg = compose_config(files, "queue", env={**env_example(), "CPU_WORKERS": "4"})
    assert cfg["services"]["worker"]["deploy"]["replicas"] == 4


def test_env_example_shows_settings_defaults() -> None:
    """Every commented ``# EVOTOK_X=value`` line of deploy/evotok.env.example is the default (GPU worker lines
    aside), so the file never advertises a value the service does not use."""
    shown = {}
    for line in (REPO / "deploy" / "evotok.env.example").read_text(encoding="utf-8").splitlines():
        m = re.match(r"^# (EVOTOK_[A-Z0-9_]+)=(\S*)", line)
        if m:
            shown[m.group(1)] = m.group(2)
    assert len(shown) >= 15
    defaults = _defaults().model_dump()
    for env_name, value in shown.items():
        field = env_name.removeprefix("EVOTOK_").lower()
        if field in set(DEPLOYMENT_FIELDS) | GPU_WORKER_FIELDS:
            continue
        assert _settings_from_env({env_name: value}).model_dump()[field] == defaults[field], (env_name, value)


def test_deployment_doc_defaults_table() -> None:
    """docs/deployment.md's table of serving defaults (between the ``defaults`` markers) is Settings'."""
    text = (REPO / "docs" / "deployment.md").read_text(encoding="utf-8")
    block = text.split("<!-- defaults:start -->", 1)[1].split("<!-- defaults:end -->", 1)[0]
    rows = re.findall(r"^\| `(EVOTOK_[A-Z0-9_]+)` \| `([^`]*)` \|", block, flags=re.M)
    assert len(rows) >= 8
    defaults = _defaults().model_dump()
    for env_name, value in rows:
        field = env_name.removeprefix("EVOTOK_").lower()
        assert _settings_from_env({env_name: value}).model_dump()[field] == defaults[field], (env_name, value)
