"""Dockerfile lint (hadolint, documented ignores only), build-context hygiene, and the entrypoint's logic.

Docker cannot run here, so the image is never built in these tests; what can be checked without it is:
hadolint on the Dockerfile, the dependency-layer script it runs, and ``deploy/docker/entrypoint.sh`` run
by real bash with a stand-in ``evotok`` command (engine build on first start, once, under a lock).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import yaml

from tests.deploy.deploy_helpers import REPO

HADOLINT = Path(sys.executable).parent / "hadolint"
ENTRYPOINT = REPO / "deploy" / "docker" / "entrypoint.sh"


def _hadolint(dockerfile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HADOLINT), *extra, str(dockerfile)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_hadolint_passes_with_repo_config() -> None:
    res = _hadolint(REPO / "Dockerfile", "--config", str(REPO / ".hadolint.yaml"))
    assert res.returncode == 0, res.stdout + res.stderr


def test_hadolint_fails_on_a_sloppy_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\nRUN cd /app && apt-get install curl\n")
    res = _hadolint(bad, "--config", str(REPO / ".hadolint.yaml"))
    assert res.returncode != 0
    assert "DL3007" in res.stdout  # :latest


def test_hadolint_ignores_are_documented() -> None:
    text = (REPO / ".hadolint.yaml").read_text(encoding="utf-8")
    config = yaml.safe_load(text)
    assert config["failure-threshold"] in ("warning", "info", "style")
    lines = text.splitlines()
    for rule in config.get("ignored", []):
        idx = next(i for i, line in enumerate(lines) if line.strip() == f"- {rule}")
        comment = " ".join(
            line.strip() for line in lines[max(0, idx - 4) : idx] if line.strip().startswith("#")
        )
        assert rule in comment and len(comment) > 60, f"{rule} is ignored without a reason"
    # no inline `# hadolint ignore=` escapes in the Dockerfile
    assert "hadolint ignore" not in (REPO / "Dockerfile").read_text(encoding="utf-8")


def _stages() -> dict[str, list[str]]:
    stages: dict[str, list[str]] = {}
    current = ""
    for line in (REPO / "Dockerfile").read_text(encoding="utf-8").splitlines():
        m = re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line)
        if m:
            current = m.group(1)
            stages[current] = []
        elif current:
            stages[current].append(line)
    return stages


def test_dockerfile_structure() -> None:
    stages = _stages()
    assert {"cpu-deps", "gpu-deps", "cpu", "gpu"} <= set(stages)
    assert list(stages)[-1] == "cpu", "default target (last stage) should be the CPU image"
    for target in ("cpu", "gpu"):
        body = "\n".join(stages[target])
        assert re.search(r"^USER 10001", body, re.M), f"{target} runs as root"
        assert "HEALTHCHECK" in body and "ENTRYPOINT" in body
        assert "COPY weights/evotok-small" in body
        # code comes after the dependency layer: the runtime stages copy sources, the deps stages do not
        assert "COPY evotok" in body
        assert "COPY evotok" not in "\n".join(stages[f"{target}-deps"])
    assert (
        "cpu,torch" in "\n".join(stages["cpu-deps"])
        and "gpu" not in "\n".join(stages["cpu-deps"]).split("cpu,torch")[1]
    )
    assert "gpu,torch,trt" in "\n".join(stages["gpu-deps"])
    assert "cpu" not in re.findall(r"requirements\.py pyproject\.toml (\S+)", "\n".join(stages["gpu-deps"]))[
        0
    ].split(",")


def test_dockerignore_is_an_allow_list() -> None:
    text = (REPO / ".dockerignore").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "*"
    allowed = {ln[1:] for ln in lines if ln.startswith("!")}
    copied = set(re.findall(r"^COPY (?!--from)(?:--\S+ )*(\S+)", (REPO / "Dockerfile").read_text(), re.M))
    copied |= {"pyproject.toml", "constraints-cpu.txt"}
    for src in copied:
        assert any(src == a or src.startswith(a + "/") for a in allowed), f"{src} is copied but excluded"
    assert ".venv" not in allowed and ".env" not in allowed


def test_requirements_script_exclusive_extras() -> None:
    script = REPO / "deploy" / "docker" / "requirements.py"
    ok = subprocess.run(
        [sys.executable, str(script), str(REPO / "pyproject.toml"), "gpu,torch,trt"],
        capture_output=True,
        text=True,
        check=True,
    )
    reqs = ok.stdout.split()
    assert any(r.startswith("onnxruntime-gpu") for r in reqs)
    assert not any(re.match(r"onnxruntime(?!-gpu)", r) for r in reqs)
    assert any(r.startswith("tensorrt") for r in reqs) and any(r.startswith("fastapi") for r in reqs)
    bad = subprocess.run(
        [sys.executable, str(script), str(REPO / "pyproject.toml"), "cpu,gpu"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode != 0 and "mutually exclusive" in bad.stderr


# ------------------------------------------------------------------------------- entrypoint, for real
def _fake_bin(tmp: Path, gpu: bool) -> Path:
    """A PATH dir with a stand-in ``evotok`` that logs its argv (and ``nvidia-smi`` when ``gpu``)."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    evotok = bin_dir / "evotok"
    script = (
        "#!/usr/bin/env bash\n"
        'if [ "$1" = --version ]; then echo "evotok 0.1.0"; exit 0; fi\n'
        'echo "$*" >> "$FAKE_LOG"\n'
        'if [ "$1" = export ] && [ -n "${FAKE_EXPORT_SLEEP:-}" ]; then sleep "$FAKE_EXPORT_SLEEP"; fi\n'
    )
    # never rewrite a script another concurrent start may be executing (bash reads scripts incrementally)
    if not evotok.exists() or evotok.read_text() != script:
        tmp = bin_dir / "evotok.tmp"
        tmp.write_text(script)
        tmp.chmod(tmp.stat().st_mode | stat.S_IEXEC)
        tmp.replace(evotok)
    if gpu:
        smi = bin_dir / "nvidia-smi"
        smi.write_text('#!/usr/bin/env bash\necho "NVIDIA H100 80GB HBM3, 9.0"\n')
        smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    return bin_dir


def _entry(tmp: Path, *args: str, gpu: bool = False, **env: str) -> subprocess.CompletedProcess[str]:
    weights = tmp / "weights"
    if not weights.exists():
        weights.mkdir()
        (weights / "config.json").write_text('{"name": "tiny"}')
        (weights / "model.safetensors").write_bytes(b"\0" * 16)
    base = {
        "PATH": f"{_fake_bin(tmp, gpu)}:/usr/bin:/bin",
        "FAKE_LOG": str(tmp / "calls.log"),
        "EVOTOK_WEIGHTS": str(weights),
        "EVOTOK_CACHE_DIR": str(tmp / "cache"),
    }
    return subprocess.run(
        ["bash", str(ENTRYPOINT), *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _calls(tmp: Path) -> list[str]:
    log = tmp / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


@pytest.mark.skipif(shutil.which("flock") is None, reason="util-linux flock missing")
def test_entrypoint_builds_engines_once_then_serves(tmp_path: Path) -> None:
    first = _entry(tmp_path, "api")
    assert first.returncode == 0, first.stderr
    cache = tmp_path / "cache"
    assert _calls(tmp_path) == [f"export --cache-dir {cache}", "serve --host 0.0.0.0 --port 8000"]
    assert len(list(cache.glob(".evotok-export-*.done"))) == 1
    second = _entry(tmp_path, "worker")
    assert second.returncode == 0, second.stderr
    assert _calls(tmp_path)[2:] == ["worker"], "engines were rebuilt although present"
    # new weights -> new key -> rebuild
    (tmp_path / "weights" / "model.safetensors").write_bytes(b"\1" * 16)
    _entry(tmp_path, "worker")
    assert _calls(tmp_path)[3:] == [f"export --cache-dir {cache}", "worker"]


@pytest.mark.skipif(shutil.which("flock") is None, reason="util-linux flock missing")
def test_entrypoint_skips_engines_for_redis_api_and_torch(tmp_path: Path) -> None:
    assert _entry(tmp_path, "api", EVOTOK_QUEUE="redis", EVOTOK_PORT="8123").returncode == 0
    assert _entry(tmp_path, "worker", EVOTOK_BACKEND="torch").returncode == 0
    assert _entry(tmp_path, "worker", EXPORT_ON_START="never").returncode == 0
    assert _calls(tmp_path) == ["serve --host 0.0.0.0 --port 8123", "worker", "worker"]


@pytest.mark.skipif(shutil.which("flock") is None, reason="util-linux flock missing")
def test_entrypoint_tensorrt_needs_a_gpu(tmp_path: Path) -> None:
    no_gpu = _entry(tmp_path, "worker", EVOTOK_BACKEND="tensorrt", EVOTOK_DEVICE="cuda")
    assert no_gpu.returncode != 0 and "no GPU is visible" in no_gpu.stderr
    assert _calls(tmp_path) == []
    ok = _entry(
        tmp_path, "worker", gpu=True, EVOTOK_BACKEND="tensorrt", EVOTOK_DEVICE="cuda", EVOTOK_PRECISION="fp16"
    )
    assert ok.returncode == 0, ok.stderr
    assert _calls(tmp_path) == [f"export --cache-dir {tmp_path / 'cache'} --trt --precision fp16", "worker"]


@pytest.mark.skipif(shutil.which("flock") is None, reason="util-linux flock missing")
def test_entrypoint_serve_builds_tensorrt_engines_then_serves(tmp_path: Path) -> None:
    """`serve` (compose's `evotok` on the GPU image): the in-process service runs the model, so TensorRT
    engines are built first, then `evotok serve` (which starts the front ends and the runtime process)."""
    gpu = {"EVOTOK_BACKEND": "tensorrt", "EVOTOK_DEVICE": "cuda", "EVOTOK_PRECISION": "fp16"}
    res = _entry(tmp_path, "serve", gpu=True, EVOTOK_QUEUE="inprocess", **gpu)
    assert res.returncode == 0, res.stderr
    assert _calls(tmp_path) == [
        f"export --cache-dir {tmp_path / 'cache'} --trt --precision fp16",
        "serve --host 0.0.0.0 --port 8000",
    ]
    assert _entry(tmp_path, "serve", gpu=True, **gpu).returncode == 0  # engines reused
    assert _calls(tmp_path)[2:] == ["serve --host 0.0.0.0 --port 8000"]


@pytest.mark.skipif(shutil.which("flock") is None, reason="util-linux flock missing")
def test_entrypoint_concurrent_starts_build_once(tmp_path: Path) -> None:
    """Two workers sharing one cache volume: the lock makes the second wait and reuse the build."""
    results: list[subprocess.CompletedProcess[str]] = []
    _fake_bin(tmp_path, gpu=False)  # prepared once, before the concurrent starts
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "config.json").write_text('{"name": "tiny"}')
    (weights / "model.safetensors").write_bytes(b"\0" * 16)
    threads = [
        threading.Thread(target=lambda: results.append(_entry(tmp_path, "worker", FAKE_EXPORT_SLEEP="1")))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    calls = _calls(tmp_path)
    assert sorted(calls) == sorted([f"export --cache-dir {tmp_path / 'cache'}", "worker", "worker"])


def test_entrypoint_export_subcommand_passes_arguments(tmp_path: Path) -> None:
    res = _entry(tmp_path, "export", "--check", "--force")
    assert res.returncode == 0, res.stderr
    assert _calls(tmp_path) == [f"export --cache-dir {tmp_path / 'cache'} --check --force"]


@pytest.mark.parametrize("script", ["deploy/docker/entrypoint.sh", "deploy/smoke.sh"])
def test_shell_scripts_parse_and_pass_shellcheck(script: str) -> None:
    path = REPO / script
    assert os.access(path, os.X_OK), f"{script} is not executable"
    subprocess.run(["bash", "-n", str(path)], check=True)
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (apt-get install shellcheck); bash -n passed")
    res = subprocess.run(["shellcheck", str(path)], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout


# ------------------------------------------------------------------------------- healthcheck script
class _Handler(BaseHTTPRequestHandler):
    ready = False

    def do_GET(self) -> None:
        code = 200 if self.path == "/healthz" or (self.path == "/readyz" and self.ready) else 503
        self.send_response(code)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_healthcheck_script(tmp_path: Path) -> None:
    server = HTTPServer(("127.0.0.1", 0), _Handler)
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    script = str(REPO / "deploy" / "docker" / "healthcheck.py")
    try:
        env = {"PATH": os.environ["PATH"], "EVOTOK_PORT": str(port), "EVOTOK_WORKER_METRICS_PORT": "1"}
        assert subprocess.run([sys.executable, script], env=env, check=False).returncode == 0
        assert subprocess.run([sys.executable, script, "--ready"], env=env, check=False).returncode == 1
        _Handler.ready = True
        assert subprocess.run([sys.executable, script, "--ready"], env=env, check=False).returncode == 0
        # the worker port answers too (PID 1 here is not an evotok process, so both ports are tried)
        env_w = {**env, "EVOTOK_PORT": "1", "EVOTOK_WORKER_METRICS_PORT": str(port)}
        assert subprocess.run([sys.executable, script], env=env_w, check=False).returncode == 0
    finally:
        server.shutdown()
        _Handler.ready = False
    dead = {"PATH": os.environ["PATH"], "EVOTOK_PORT": "1", "EVOTOK_WORKER_METRICS_PORT": "1"}
    assert subprocess.run([sys.executable, script], env=dead, check=False).returncode == 1
