#!/usr/bin/env bash
# EvoTok container entry point.
#
#   api                 evotok serve on 0.0.0.0:$EVOTOK_PORT (builds engines first unless EVOTOK_QUEUE=redis)
#   serve               the same; the name compose's `evotok` service uses on the GPU image, where
#                       `evotok serve` (in-process queue) runs the model itself: front ends + runtime process
#   worker              evotok worker (Redis Streams consumer; builds engines first)
#   export [ARGS...]    evotok export --cache-dir $EVOTOK_CACHE_DIR [ARGS...] (e.g. --trt, --check)
#   healthcheck         exit 0 when the process in this container answers /healthz
#   anything else       exec'd as given (e.g. `bash`, `evotok info`)
#
# Engines are built once per (weights, backend, precision, GPU, evotok version) into the cache volume
# $EVOTOK_CACHE_DIR, under an flock so that several workers sharing one volume build them only once.
# A stamp file records a finished build. `evotok export` owns the layout below the cache directory
# (<cache>/<model>-<hash12>/ with the ONNX graphs and manifest, TensorRT engines keyed by GPU/TRT/ONNX hash)
# and reuses a current export by itself; the stamp only saves the start-up cost of asking it.
# Set EXPORT_ON_START=never to skip the check (engines provided some other way).
set -euo pipefail

export EVOTOK_CACHE_DIR="${EVOTOK_CACHE_DIR:-/var/cache/evotok}"

log() { printf '%s evotok-entrypoint: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2; }

# Identity of what the engines depend on; any change gives a new key and a rebuild.
engine_key() {
    local backend=$1 gpu="cpu"
    if [ "$backend" = tensorrt ] || [ "${EVOTOK_DEVICE:-cpu}" = cuda ]; then
        gpu=$(nvidia-smi --query-gpu=name,compute_cap --format=csv,noheader 2>/dev/null | head -n1 || true)
        [ -n "$gpu" ] || { log "EVOTOK_BACKEND=$backend EVOTOK_DEVICE=${EVOTOK_DEVICE:-cpu} but no GPU is visible (nvidia-smi)"; exit 1; }
    fi
    {
        printf '%s\n' "$backend" "${EVOTOK_PRECISION:-fp32}" "$gpu" "$(evotok --version)"
        find "$EVOTOK_WEIGHTS" -maxdepth 1 -type f \( -name '*.safetensors' -o -name '*.json' \) -print0 \
            | sort -z | xargs -0 sha256sum
    } | sha256sum | cut -c1-16
}

ensure_engines() {
    local backend="${EVOTOK_BACKEND:-onnxruntime}"
    if [ "$backend" = torch ] || [ "${EXPORT_ON_START:-auto}" = never ]; then
        return 0
    fi
    [ -d "$EVOTOK_WEIGHTS" ] || { log "EVOTOK_WEIGHTS=$EVOTOK_WEIGHTS is not a directory"; exit 1; }
    mkdir -p "$EVOTOK_CACHE_DIR"
    local key stamp
    key=$(engine_key "$backend")
    stamp="$EVOTOK_CACHE_DIR/.evotok-export-$key.done"
    if [ -f "$stamp" ]; then
        log "engines for key $key already in $EVOTOK_CACHE_DIR"
        return 0
    fi
    exec 9>"$EVOTOK_CACHE_DIR/.evotok-export.lock"
    log "waiting for the engine-cache lock ($EVOTOK_CACHE_DIR/.evotok-export.lock)"
    flock 9
    if [ ! -f "$stamp" ]; then
        local args=(--cache-dir "$EVOTOK_CACHE_DIR")
        if [ "$backend" = tensorrt ]; then
            args+=(--trt)
            local precision="${EVOTOK_PRECISION:-fp16}"
            case "$precision" in fp16|bf16) args+=(--precision "$precision") ;; esac
        fi
        log "building engines (key $key): evotok export ${args[*]}"
        local t0=$SECONDS
        evotok export "${args[@]}"
        touch "$stamp"
        log "engines built in $((SECONDS - t0)) s"
    fi
    flock -u 9
    exec 9>&-
}

cmd="${1:-api}"
[ $# -gt 0 ] && shift
case "$cmd" in
    api|serve)
        [ "${EVOTOK_QUEUE:-inprocess}" = redis ] || ensure_engines
        exec evotok serve --host "${EVOTOK_HOST:-0.0.0.0}" --port "${EVOTOK_PORT:-8000}" "$@"
        ;;
    worker)
        ensure_engines
        exec evotok worker "$@"
        ;;
    export)
        exec evotok export --cache-dir "$EVOTOK_CACHE_DIR" "$@"
        ;;
    healthcheck)
        exec python /usr/local/lib/evotok/healthcheck.py "$@"
        ;;
    *)
        exec "$cmd" "$@"
        ;;
esac
