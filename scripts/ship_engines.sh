#!/usr/bin/env bash
# Write the shipped model's ONNX export into the model folder, weights/evotok-small/onnx/, where the wheel
# carries it (pyproject.toml maps weights/ to the package `evotok._shipped`), so `pip install
# 'evotok-serve[cpu]'` serves without torch. Run it in the dev venv (`make venv`) after the weights change;
# tests/packaging/test_shipped_engines.py fails until it has run. The export is deterministic (same weights,
# same torch: byte-identical graphs) and --check records ONNX Runtime vs PyTorch parity in the manifest.
# A stale export is never served: ensure_exported reads <weights>/onnx/ only when its manifest names the
# weights' hash and every graph matches its recorded SHA-256.
# Usage: scripts/ship_engines.sh [MODEL_DIR]   (default weights/evotok-small)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
weights="${1:-$root/weights/evotok-small}"
"$root/.venv/bin/evotok" export --weights "$weights" --out "$weights/onnx" --check --force --threads 2
du -sh "$weights/onnx"
