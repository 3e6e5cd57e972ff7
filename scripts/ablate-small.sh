#!/usr/bin/env bash
# Short ablation runs behind docs/eval/ablation.md: each row changes one thing on the row above, trains STEPS steps
# (seed 0) and evaluates on the first LIMIT held-out 256x256 crops (no FID). Usage: scripts/ablate-small.sh [ROW...]
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-200}; LIMIT=${LIMIT:-24}; THREADS=${THREADS:-1}; OUT=${OUT:-runs/ablation}
BIN=.venv/bin
v1=(--preset evotok-small-v1 --crop 256 --batch-size 4 --lr 3e-4 --set 'w_perceptual=0.1' --set 'perceptual_start=0'
    --set 'depth_mode="prefix_prob"' --set 'pixel_prefix_prob=0.25' --set 'w_adv=0.1' --set 'disc_start=1500')
crop=("${v1[@]}" --crop 128 --batch-size 8)
decoder=("${crop[@]}" --preset evotok-small)
schedule=("${decoder[@]}" --set 'w_perceptual=0' --set 'lr_schedule="cosine"' --set 'warmup_steps=20' --lr 4e-4)
depth=("${schedule[@]}" --set 'depth_mode="stratified"')
gan=("${depth[@]}" --set 'disc_start=0')
rows=("$@"); [ ${#rows[@]} -gt 0 ] || rows=(v1 crop decoder schedule depth gan)
for row in "${rows[@]}"; do
  declare -n args="$row"
  dir="$OUT/$row"
  start=$(date +%s)
  $BIN/evotok train "${args[@]}" --steps "$STEPS" --threads "$THREADS" --out "$dir" --resume --no-progress \
    --export-weights "$dir/weights" 2>&1 | grep -v Warning || true
  end=$(date +%s)
  $BIN/evotok eval --weights "$dir/weights" --out "$dir/eval" --no-fid --limit "$LIMIT" > "$dir/eval.log" 2>&1
  echo "$row wall_s=$((end - start)) $(python3 -c "import json,sys; r=json.load(open('$dir/eval/eval.json')); print('psnr@1=%.2f psnr@4=%.2f colour@4=%.2f shift=%s cos@16=%.3f' % (r['psnr_by_depth'][0], r['psnr_by_depth'][-1], r['colour_error_by_depth'][-1], [round(v,1) for v in r['colour_shift_rgb']], r['semantic_cos_by_depth'][-1]))")" | tee -a "$OUT/summary.txt"
done
