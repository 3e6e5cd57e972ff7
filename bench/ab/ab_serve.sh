#!/bin/bash
# Side by side, interleaved: COMMIT's `evotok serve` as one process against this checkout's default (front ends
# auto) and its single process, all serving the fake runtime at a GPU-like cost; 256 px JPEG bodies, the closed
# loop of bench/service_bench.py. Usage: bench/ab/ab_serve.sh COMMIT [ROUNDS] [SECONDS]
set -euo pipefail
commit=${1:?usage: bench/ab/ab_serve.sh COMMIT [ROUNDS] [SECONDS]}; rounds=${2:-2}; seconds=${3:-6}
repo=$(cd "$(dirname "$0")/../.." && pwd)
py="$repo/.venv/bin/python"
old=$(mktemp -d /tmp/evotok-ab-XXXXXX)
git -C "$repo" worktree add -f --detach "$old" "$commit" -q
logs=$(mktemp -d)
# `exec` below: the jobs are the servers themselves, so SIGTERM reaches them (a supervisor drains its children)
cleanup() { kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; git -C "$repo" worktree remove -f "$old"; rm -rf "$logs"; }
trap cleanup EXIT
export EVOTOK_FAKE_COST_MS=2,0.1 EVOTOK_GRPC_PORT=0 EVOTOK_MAX_BATCH_SIZE=32 EVOTOK_BATCH_CAP=32 \
  EVOTOK_LOG_LEVEL=warning EVOTOK_MAX_QUEUE_SIZE=1024 EVOTOK_WARMUP_BATCH_SIZES='[1,32]' EVOTOK_MAX_QUEUE_DELAY_MS=0
port() { "$py" -c 'from evotok.tools.procs import free_port; print(free_port())'; }
p_old=$(port); p_new=$(port); p_one=$(port)
(cd /tmp && EVOTOK_FRONTENDS=1 exec "$py" "$repo/bench/ab/checkout_cli.py" "$old" serve --host 127.0.0.1 --port "$p_old" > "$logs/old.log" 2>&1) &
(cd /tmp && EVOTOK_FRONTENDS=0 exec "$py" -m evotok.cli serve --host 127.0.0.1 --port "$p_new" > "$logs/auto.log" 2>&1) &
(cd /tmp && EVOTOK_FRONTENDS=1 exec "$py" -m evotok.cli serve --host 127.0.0.1 --port "$p_one" > "$logs/one.log" 2>&1) &
for p in $p_old $p_new $p_one; do
  for _ in $(seq 120); do curl -sf "127.0.0.1:$p/readyz" > /dev/null && break; sleep 1; done
done
load() { "$py" - "$repo/bench" "$@" <<'PY'
import asyncio, sys
sys.path.insert(0, sys.argv[1])
from service_bench import _closed_loop, _photo_body
url, c, seconds = sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
body, _ = _photo_body(256, "jpeg")
lat, errors, elapsed = asyncio.run(_closed_loop(url, body, c, seconds, "image/jpeg"))
lat.sort()
print(f"c={c} img/s={len(lat) / elapsed:.0f} p50={1000 * lat[len(lat) // 2]:.1f}ms errors={errors}")
PY
}
for p in $p_old $p_new $p_one; do load "http://127.0.0.1:$p" 4 1 > /dev/null; done  # warm
for c in 32 64; do
  for r in $(seq "$rounds"); do
    echo "$commit single process, round $r: $(load "http://127.0.0.1:$p_old" "$c" "$seconds")"
    echo "this checkout, front ends auto, round $r: $(load "http://127.0.0.1:$p_new" "$c" "$seconds")"
    echo "this checkout, one process, round $r: $(load "http://127.0.0.1:$p_one" "$c" "$seconds")"
  done
done
