#!/usr/bin/env bash
# Smoke test of the compose deployment on a GPU host (or, with --cpu, any Docker host):
# compose up (build), wait until the API is ready, encode + decode the golden photos and any --image,
# print code agreement and throughput (deploy/smoke_client.py), compose down. By default the single-host
# `evotok` service; --queue: the Redis topology (profile `queue`: redis, API replicas, worker) instead.
#
#   cp deploy/evotok.env.example .env && $EDITOR .env
#   deploy/smoke.sh [--cpu] [--queue] [--env-file FILE] [--image PHOTO]... [--requests N] [--concurrency C] [--keep]
#
# Needs: docker with the compose plugin >= 2.24 (for `!reset` and `up --wait`), and on a GPU host the
# NVIDIA driver + nvidia-container-toolkit. Volumes (engine cache, Redis data) are kept on `down`, so a
# second run reuses the engines; `docker compose down -v` removes them.
set -euo pipefail

cd "$(dirname "$0")/.."

cpu=0 queue=0 keep=0 env_file=.env requests=256 concurrency=32 wait_s=1800
report="${TMPDIR:-/tmp}/evotok-smoke-report.json"
images=()
while [ $# -gt 0 ]; do
    case "$1" in
        --cpu) cpu=1 ;;
        --queue) queue=1 ;;
        --keep) keep=1 ;;
        --env-file) env_file=$2; shift ;;
        --image) images+=("$2"); shift ;;
        --requests) requests=$2; shift ;;
        --concurrency) concurrency=$2; shift ;;
        --wait) wait_s=$2; shift ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "smoke: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done

log() { printf '\n== %s\n' "$*" >&2; }
die() { printf 'smoke: %s\n' "$*" >&2; exit 1; }

[ -f "$env_file" ] || die "no env file $env_file (cp deploy/evotok.env.example .env and set the secrets)"
docker compose version >/dev/null 2>&1 || die "docker compose (v2 plugin) not found"
compose=(docker compose --env-file "$env_file" -f docker-compose.yml)
if [ "$cpu" = 1 ]; then
    compose+=(-f docker-compose.cpu.yml)
    min_agreement=1.0
else
    command -v nvidia-smi >/dev/null || die "nvidia-smi not found: use --cpu on a host without NVIDIA GPUs"
    nvidia-smi --query-gpu=index,name,compute_cap,driver_version,memory.total --format=csv
    min_agreement=$(sed -n 's/^EVOTOK_SELF_TEST_THRESHOLD=//p' "$env_file" | tail -n1)
    min_agreement=${min_agreement:-0.99}
fi
# the service that answers HTTP, and the one whose /metrics show code agreement and batch sizes
up_args=()
if [ "$queue" = 1 ]; then
    compose+=(--profile queue)
    up_args+=(--scale evotok=0)  # not both topologies on GPU 0 and port 8000
    api=api metrics_service=worker metrics_port_var=EVOTOK_WORKER_METRICS_PORT
else
    api=evotok metrics_service=evotok metrics_port_var=EVOTOK_PORT
fi

cleanup() {
    local rc=$?
    if [ "$rc" != 0 ]; then
        log "failed (exit $rc): last logs"
        "${compose[@]}" ps || true
        "${compose[@]}" logs --tail 80 || true
    fi
    if [ "$keep" = 1 ]; then
        log "--keep: leaving the stack up (${compose[*]} down)"
    else
        log "compose down"
        "${compose[@]}" down --remove-orphans || true
    fi
}
trap cleanup EXIT

log "config check"
"${compose[@]}" config -q

log "build + up (waits for health checks, at most ${wait_s}s: the first start builds engines)"
t0=$SECONDS
"${compose[@]}" up -d --build --wait --wait-timeout "$wait_s" "${up_args[@]}"
echo "stack healthy after $((SECONDS - t0)) s"

# the (first replica's) published port, probed from the host
hostport=$("${compose[@]}" port --index 1 "$api" 8000)
url="http://127.0.0.1:${hostport##*:}"
log "API at $url"
for _ in $(seq 1 60); do
    code=$(curl -s -o /dev/null -w '%{http_code}' "$url/readyz" || true)
    [ "$code" = 200 ] && break
    sleep 2
done
[ "$code" = 200 ] || die "$url/readyz answered $code"
curl -s "$url/readyz"; echo

log "encode/decode + throughput (inside the $api container; client: deploy/smoke_client.py)"
client_args=(--url http://127.0.0.1:8000 --requests "$requests" --concurrency "$concurrency" --min-agreement "$min_agreement")
for img in "${images[@]}"; do
    [ -f "$img" ] || die "no such image $img"
    name="/tmp/smoke-$(basename "$img")"
    "${compose[@]}" cp "$img" "$api:$name"
    client_args+=(--image "$name")
done
set +e
"${compose[@]}" exec -T "$api" python - "${client_args[@]}" < deploy/smoke_client.py | tee "$report"
status=${PIPESTATUS[0]}
set -e

log "$metrics_service metrics (code agreement, batch sizes)"
"${compose[@]}" exec -T "$metrics_service" python -c "
import os, urllib.request
port = os.environ['$metrics_port_var']
text = urllib.request.urlopen(f'http://127.0.0.1:{port}/metrics', timeout=5).read().decode()
print('\n'.join(l for l in text.splitlines() if l.startswith(('evotok_code_agreement_ratio', 'evotok_batch_size_count', 'evotok_batch_size_sum', 'evotok_worker_ready'))))
" || true

[ "$status" = 0 ] || die "smoke client failed (see $report)"
log "smoke test passed; report in $report"
