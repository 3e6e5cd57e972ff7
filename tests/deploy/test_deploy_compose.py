"""docker-compose.yml, its CPU override and the profiles resolve with the real compose v2 binary.

Topologies: by default one ``evotok`` service per GPU runs ``evotok serve`` (front-end processes + one runtime
process, no Redis); profile ``queue`` is Redis + API replicas + workers, ``queue-multi-gpu`` its second GPU,
``multi-gpu`` the default topology's second GPU, ``monitoring`` Prometheus and Grafana.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.deploy_helpers import COMPOSE_PROFILES, REPO, compose_config, env_example, run_compose

BASE = ("docker-compose.yml",)
CPU = ("docker-compose.yml", "docker-compose.cpu.yml")
QUEUE_SERVICES = {"redis", "api", "worker", "worker-1"}


@pytest.mark.parametrize(
    ("files", "profiles"),
    [
        (BASE, ()),
        (CPU, ()),
        (BASE, ("monitoring",)),
        (CPU, ("monitoring", "multi-gpu")),
        (BASE, ("multi-gpu",)),
        (BASE, ("queue",)),
        (CPU, ("queue",)),
        (BASE, ("queue", "queue-multi-gpu", "monitoring")),
        (CPU, COMPOSE_PROFILES),
    ],
    ids=[
        "default",
        "cpu",
        "monitoring",
        "cpu+monitoring+multi-gpu",
        "multi-gpu",
        "queue",
        "cpu+queue",
        "queue+queue-multi-gpu+monitoring",
        "cpu+all",
    ],
)
def test_compose_config_quiet_succeeds(files: tuple[str, ...], profiles: tuple[str, ...]) -> None:
    args = [a for p in profiles for a in ("--profile", p)] + ["config", "-q"]
    res = run_compose(args, env=env_example(), files=files)
    assert res.returncode == 0, res.stderr


def _gpu_ids(svc: dict[str, Any]) -> list[str]:
    devices = svc["deploy"]["resources"]["reservations"]["devices"]
    assert [(d["driver"], d["capabilities"]) for d in devices] == [("nvidia", ["gpu"])]
    ids: list[str] = devices[0]["device_ids"]
    return ids


def _published(svc: dict[str, Any]) -> dict[int, str]:
    """container port -> published host port(s)"""
    return {p["target"]: str(p["published"]) for p in svc["ports"]}


# ----------------------------------------------------------------------- required variables
def test_api_keys_are_required_and_fail_loudly() -> None:
    env = {k: v for k, v in env_example().items() if k != "EVOTOK_API_KEYS"}
    res = run_compose(["config", "-q"], env=env)
    assert res.returncode != 0, "compose accepted a config without EVOTOK_API_KEYS"
    assert "EVOTOK_API_KEYS" in res.stderr and "required variable" in res.stderr, res.stderr


def test_empty_required_variable_fails_too() -> None:
    res = run_compose(["config", "-q"], env={**env_example(), "EVOTOK_API_KEYS": ""})
    assert res.returncode != 0 and "EVOTOK_API_KEYS" in res.stderr


@pytest.mark.parametrize("profiles", [(), ("queue",)], ids=["default", "queue"])
def test_default_topology_needs_no_redis_password(profiles: tuple[str, ...]) -> None:
    """Compose interpolates services of inactive profiles too, so a ``${EVOTOK_REDIS_PASSWORD:?}`` anywhere
    would stop a plain ``docker compose up``; the password is checked by the redis container instead."""
    env = {k: v for k, v in env_example().items() if k != "EVOTOK_REDIS_PASSWORD"}
    cfg = compose_config(BASE, *profiles, env=env)
    assert "EVOTOK_REDIS_PASSWORD" not in cfg["services"]["evotok"]["environment"]


def _redis_script(cfg: dict[str, Any], auth_conf: Path) -> list[str]:
    """The command the container runs: `config` prints ``$`` escaped as ``$$`` (as compose reads it back)."""
    cmd: list[str] = cfg["services"]["redis"]["command"]
    assert cmd[:2] == ["sh", "-c"] and "/tmp/redis-auth.conf" in cmd[2]
    return [*cmd[:2], cmd[2].replace("$$", "$").replace("/tmp/redis-auth.conf", str(auth_conf))]


def _fake_redis_server(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "redis-server"
    fake.write_text('#!/bin/sh\necho "$@" > "$FAKE_ARGS"\n')
    fake.chmod(0o755)
    return {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "FAKE_ARGS": str(tmp_path / "args"),
        "REDIS_MAXMEMORY": "2gb",
    }


def test_redis_refuses_to_start_without_a_password(tmp_path: Path) -> None:
    """The resolved redis command, run by a real ``sh`` with a stand-in ``redis-server``."""
    env = {k: v for k, v in env_example().items() if k != "EVOTOK_REDIS_PASSWORD"}
    cfg = compose_config(BASE, "queue", env=env)
    assert cfg["services"]["redis"]["environment"]["REDIS_PASSWORD"] == ""
    run_env = {**_fake_redis_server(tmp_path), "REDIS_PASSWORD": ""}
    res = subprocess.run(
        _redis_script(cfg, tmp_path / "auth.conf"), env=run_env, capture_output=True, text=True, check=False
    )
    assert res.returncode != 0 and "EVOTOK_REDIS_PASSWORD" in res.stderr, res.stderr
    assert not (tmp_path / "args").exists(), "redis-server started without a password"


def test_redis_password_goes_to_a_file_not_argv(tmp_path: Path) -> None:
    cfg = compose_config(BASE, "queue")
    password = env_example()["EVOTOK_REDIS_PASSWORD"]
    assert cfg["services"]["redis"]["environment"]["REDIS_PASSWORD"] == password
    run_env = {**_fake_redis_server(tmp_path), "REDIS_PASSWORD": password}
    conf = tmp_path / "auth.conf"
    res = subprocess.run(_redis_script(cfg, conf), env=run_env, capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    assert conf.read_text() == f'requirepass "{password}"\n'
    args = (tmp_path / "args").read_text()
    assert str(conf) in args and password not in args


def test_invalid_compose_is_rejected_by_the_binary(tmp_path: Path) -> None:
    """The check can fail: a structurally wrong file gives a non-zero status."""
    bad = tmp_path / "bad.yml"
    bad.write_text("services:\n  api:\n    image: x\n    ports: 8000\n", encoding="utf-8")
    res = run_compose(["config", "-q"], files=(str(bad),))
    assert res.returncode != 0 and "ports" in res.stderr


# ----------------------------------------------------------------------- default topology: `evotok`
def test_default_is_the_single_host_service_alone() -> None:
    """Plain ``docker compose up``: only ``evotok``, nothing that needs Redis."""
    assert sorted(compose_config(BASE)["services"]) == ["evotok"]
    assert sorted(compose_config(CPU)["services"]) == ["evotok"]


def test_evotok_service_runs_serve_on_the_gpu() -> None:
    svc = compose_config(BASE)["services"]["evotok"]
    assert svc["build"]["target"] == "gpu" and svc["image"].endswith("-gpu")
    assert svc["command"] == ["serve"]
    assert svc["init"] is True  # PID 1 reaps the orphans of the supervisor's children
    assert _gpu_ids(svc) == ["0"]
    env = svc["environment"]
    assert env["EVOTOK_QUEUE"] == "inprocess"
    assert env["EVOTOK_FRONTENDS"] == "0"  # auto: the container's usable cores
    assert (env["EVOTOK_BACKEND"], env["EVOTOK_DEVICE"], env["EVOTOK_PRECISION"]) == (
        "tensorrt",
        "cuda",
        "fp16",
    )
    assert (env["EVOTOK_HOST"], env["EVOTOK_PORT"], env["EVOTOK_GRPC_PORT"]) == ("0.0.0.0", "8000", "8001")
    assert env["EVOTOK_API_KEYS"] == env_example()["EVOTOK_API_KEYS"]
    assert not any(k.startswith(("EVOTOK_REDIS", "EVOTOK_WORKER")) for k in env), "Redis settings in evotok"
    assert _published(svc) == {8000: "8000", 8001: "8001"}
    assert ("engine-cache", "/var/cache/evotok") in {(v["source"], v["target"]) for v in svc["volumes"]}
    assert "depends_on" not in svc


def test_evotok_service_health_shm_and_grace() -> None:
    svc = compose_config(BASE)["services"]["evotok"]
    # readiness (in-process: model loaded and golden self-test passed), with room for the first engine build
    assert svc["healthcheck"]["test"] == ["CMD", "python", "/usr/local/lib/evotok/healthcheck.py", "--ready"]
    assert svc["healthcheck"]["start_period"] == "15m0s"
    # each front end's slot block lives in /dev/shm (64 x 196 kB); Docker's default is 64 MiB
    assert int(svc["shm_size"]) >= 512 * 2**20
    # the supervisor drains front ends, then the runtime process, each up to request_timeout_s + 10 s
    from evotok.service.settings import Settings

    drain_s = 2 * (Settings.model_fields["request_timeout_s"].default + 10)
    grace = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", svc["stop_grace_period"])
    assert grace is not None, svc["stop_grace_period"]
    assert int(grace[1] or 0) * 60 + int(grace[2] or 0) > drain_s


def test_multi_gpu_profile_pins_one_evotok_per_gpu() -> None:
    cfg = compose_config(BASE, "multi-gpu")
    assert sorted(cfg["services"]) == ["evotok", "evotok-1"]
    assert [_gpu_ids(cfg["services"][s]) for s in ("evotok", "evotok-1")] == [["0"], ["1"]]
    ports = [set(_published(cfg["services"][s]).values()) for s in ("evotok", "evotok-1")]
    assert not ports[0] & ports[1], "two services on one host port"
    assert cfg["services"]["evotok-1"]["environment"] == cfg["services"]["evotok"]["environment"]


# ----------------------------------------------------------------------- profile `queue`: Redis topology
def test_queue_profile_holds_the_redis_topology() -> None:
    assert set(compose_config(BASE, "queue")["services"]) == {"evotok"} | QUEUE_SERVICES - {"worker-1"}
    assert set(compose_config(BASE, "queue", "queue-multi-gpu")["services"]) == {"evotok"} | QUEUE_SERVICES
    cfg = compose_config(BASE, *COMPOSE_PROFILES)
    for name in QUEUE_SERVICES:
        assert set(cfg["services"][name]["profiles"]) & {"queue", "queue-multi-gpu"}, name


def test_queue_multi_gpu_alone_fails_loudly() -> None:
    """worker-1 needs the queue profile's Redis; compose says so instead of starting a worker without it."""
    res = run_compose(["--profile", "queue-multi-gpu", "config", "-q"], env=env_example())
    assert res.returncode != 0 and "redis" in res.stderr


def test_queue_services_and_gpu_reservation() -> None:
    cfg = compose_config(BASE, "queue", "queue-multi-gpu")
    assert [_gpu_ids(cfg["services"][s]) for s in ("worker", "worker-1")] == [["0"], ["1"]]
    assert cfg["services"]["worker"]["build"]["target"] == "gpu"
    assert cfg["services"]["api"]["build"]["target"] == "cpu"
    assert "engine-cache" in cfg["volumes"]
    mounts = {(v["source"], v["target"]) for v in cfg["services"]["worker"]["volumes"]}
    assert ("engine-cache", "/var/cache/evotok") in mounts
    assert cfg["services"]["worker"]["healthcheck"]["test"][-1] == "--ready"


def test_cpu_override_removes_gpus_and_switches_backend() -> None:
    cfg = compose_config(CPU, *COMPOSE_PROFILES)
    for name in ("evotok", "evotok-1", "worker", "worker-1"):
        svc = cfg["services"][name]
        assert not svc["deploy"]["resources"].get("reservations", {}).get("devices"), name
        assert svc["build"]["target"] == "cpu" and svc["image"].endswith("-cpu"), name
        assert svc["environment"]["EVOTOK_BACKEND"] == "onnxruntime", name
        assert svc["environment"]["EVOTOK_DEVICE"] == "cpu", name
    # the override keeps the shared settings of the base file
    for name in ("worker", "worker-1"):
        assert cfg["services"][name]["environment"]["EVOTOK_QUEUE"] == "redis"
    evotok = cfg["services"]["evotok"]
    assert evotok["environment"]["EVOTOK_QUEUE"] == "inprocess"
    assert evotok["environment"]["EVOTOK_FRONTENDS"] == "0"
    assert evotok["command"] == ["serve"] and evotok["healthcheck"]["start_period"] == "5m0s"


def test_redis_is_durable_bounded_and_gated() -> None:
    cfg = compose_config(BASE, "queue")
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
    cfg = compose_config(BASE, "queue")
    api = cfg["services"]["api"]
    assert api["deploy"]["replicas"] == 2
    assert api["ports"][0]["target"] == 8000
    assert api["environment"]["EVOTOK_API_KEYS"] == env_example()["EVOTOK_API_KEYS"]
    assert api["environment"]["EVOTOK_QUEUE"] == "redis"


def test_api_and_evotok_share_the_http_limits() -> None:
    """The hostile-input limits and auth of the published API are the same in both topologies."""
    cfg = compose_config(BASE, "queue")
    http = {
        k: v
        for k, v in cfg["services"]["api"]["environment"].items()
        if k.startswith("EVOTOK_")
        and not k.startswith("EVOTOK_REDIS")
        and k not in ("EVOTOK_QUEUE", "EVOTOK_WORKERS")
    }
    evotok = cfg["services"]["evotok"]["environment"]
    assert {k: evotok.get(k) for k in http} == http


# ----------------------------------------------------------------------- profile `monitoring`
def test_monitoring_profile_mounts_existing_files() -> None:
    cfg = compose_config(BASE, "monitoring")
    assert {"prometheus", "grafana"} <= set(cfg["services"])
    for svc in ("prometheus", "grafana"):
        for vol in cfg["services"][svc]["volumes"]:
            if vol["type"] == "bind":
                assert (REPO / vol["source"]).exists(), vol["source"]


def test_prometheus_scrapes_every_serving_service() -> None:
    """Every compose service that serves /metrics, in either topology, is a scrape target on its port."""
    import yaml

    prom = yaml.safe_load((REPO / "deploy" / "monitoring" / "prometheus.yml").read_text(encoding="utf-8"))
    targets = {
        (name, sd["port"])
        for job in prom["scrape_configs"]
        for sd in job["dns_sd_configs"]
        for name in sd["names"]
    }
    cfg = compose_config(BASE, *COMPOSE_PROFILES)
    want = set()
    for name, svc in cfg["services"].items():
        if svc.get("command") in (["serve"], ["api"]):
            want.add((name, int(svc["environment"]["EVOTOK_PORT"])))
        elif svc.get("command") == ["worker"]:
            want.add((name, int(svc["environment"]["EVOTOK_WORKER_METRICS_PORT"])))
    assert {("evotok", 8000), ("evotok-1", 8000), ("api", 8000), ("worker", 9100)} <= want
    assert want <= targets, f"not scraped: {sorted(want - targets)}"
