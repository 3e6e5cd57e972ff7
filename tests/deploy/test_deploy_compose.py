"""docker-compose.yml, its CPU override and the monitoring profile resolve with the real compose v2 binary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.deploy.deploy_helpers import REPO, env_example, run_compose

BASE = ("docker-compose.yml",)
CPU = ("docker-compose.yml", "docker-compose.cpu.yml")
REQUIRED = ("EVOTOK_REDIS_PASSWORD", "EVOTOK_API_KEYS")


@pytest.mark.parametrize(
    ("files", "profiles"),
    [
        (BASE, ()),
        (CPU, ()),
        (BASE, ("monitoring",)),
        (CPU, ("monitoring", "multi-gpu")),
        (BASE, ("multi-gpu",)),
    ],
    ids=["default", "cpu", "monitoring", "cpu+monitoring+multi-gpu", "multi-gpu"],
)
def test_compose_config_quiet_succeeds(files: tuple[str, ...], profiles: tuple[str, ...]) -> None:
    args = [a for p in profiles for a in ("--profile", p)] + ["config", "-q"]
    res = run_compose(args, env=env_example(), files=files)
    assert res.returncode == 0, res.stderr


def _config(files: tuple[str, ...], *profiles: str) -> dict[str, Any]:
    args = [a for p in profiles for a in ("--profile", p)] + ["config", "--format", "json"]
    res = run_compose(args, env=env_example(), files=files)
    assert res.returncode == 0, res.stderr
    return res.json()


@pytest.mark.parametrize("missing", REQUIRED)
def test_required_variable_fails_loudly(missing: str) -> None:
    env = {k: v for k, v in env_example().items() if k != missing}
    res = run_compose(["config", "-q"], env=env)
    assert res.returncode != 0, f"compose accepted a config without {missing}"
    assert missing in res.stderr and "required variable" in res.stderr, res.stderr


def test_empty_required_variable_fails_too() -> None:
    res = run_compose(["config", "-q"], env={**env_example(), "EVOTOK_REDIS_PASSWORD": ""})
    assert res.returncode != 0 and "EVOTOK_REDIS_PASSWORD" in res.stderr


def test_invalid_compose_is_rejected_by_the_binary(tmp_path: Path) -> None:
    """The check can fail: a structurally wrong file gives a non-zero status."""
    bad = tmp_path / "bad.yml"
    bad.write_text("services:\n  api:\n    image: x\n    ports: 8000\n", encoding="utf-8")
    res = run_compose(["config", "-q"], files=(str(bad),))
    assert res.returncode != 0 and "ports" in res.stderr


def test_default_services_and_gpu_reservation() -> None:
    cfg = _config(BASE)
    assert sorted(cfg["services"]) == ["api", "redis", "worker"]
    devices = cfg["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"capabilities": ["gpu"], "driver": "nvidia", "device_ids": ["0"]}]
    assert cfg["services"]["worker"]["build"]["target"] == "gpu"
    assert cfg["services"]["api"]["build"]["target"] == "cpu"
    assert "engine-cache" in cfg["volumes"]
    mounts = {(v["source"], v["target"]) for v in cfg["services"]["worker"]["volumes"]}
    assert ("engine-cache", "/var/cache/evotok") in mounts


def test_multi_gpu_profile_pins_one_worker_per_gpu() -> None:
    cfg = _config(BASE, "multi-gpu")
    ids = [
        cfg["services"][s]["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"]
        for s in ("worker", "worker-1")
    ]
    assert ids == [["0"], ["1"]]


def test_cpu_override_removes_gpus_and_switches_backend() -> None:
    cfg = _config(CPU, "multi-gpu")
    for name in ("worker", "worker-1"):
        svc = cfg["services"][name]
        assert not svc["deploy"]["resources"].get("reservations", {}).get("devices"), name
        assert svc["build"]["target"] == "cpu"
        assert svc["environment"]["EVOTOK_BACKEND"] == "onnxruntime"
        assert svc["environment"]["EVOTOK_DEVICE"] == "cpu"
        # the override keeps the shared settings of the base file
        assert svc["environment"]["EVOTOK_QUEUE"] == "redis"


def test_redis_is_durable_bounded_and_gated() -> None:
    cfg = _config(BASE)
    redis = cfg["services"]["redis"]
    cmd = " ".join(redis["command"])
    for flag in (
        "--appendonly yes",
        "--appendfsync everysec",
        "--maxmemory-policy noeviction",
        "requirepass",
    ):
        assert flag in cmd
    assert "s3cret" not in cmd and env_example()["EVOTOK_REDIS_PASSWORD"] not in cmd, (
        "password on the command line"
    )
    assert redis["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL")
    for svc in ("api", "worker"):
        assert cfg["services"][svc]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_api_replicas_port_and_auth() -> None:
    cfg = _config(BASE)
    api = cfg["services"]["api"]
    assert api["deploy"]["replicas"] == 2
    assert api["ports"][0]["target"] == 8000
    assert api["environment"]["EVOTOK_API_KEYS"] == env_example()["EVOTOK_API_KEYS"]
    assert api["environment"]["EVOTOK_QUEUE"] == "redis"


def test_monitoring_profile_mounts_existing_files() -> None:
    cfg = _config(BASE, "monitoring")
    assert {"prometheus", "grafana"} <= set(cfg["services"])
    for svc in ("prometheus", "grafana"):
        for vol in cfg["services"][svc]["volumes"]:
            if vol["type"] == "bind":
                assert (REPO / vol["source"]).exists(), vol["source"]
