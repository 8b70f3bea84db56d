#!/usr/bin/env bash
# The main job, end to end on the CPU (about 4 minutes on 2 cores):
#   synthetic data -> training -> evaluation -> inference (and upstream's weights, if present).
# Usage: bash demo.sh [OUT]   (default OUT: demo/)
set -euo pipefail
cd "$(dirname "$0")"
OUT=${1:-demo}

echo "== 1/4 synthetic dataset (demo data, not a benchmark of real detectors)"
python train/make_synthetic.py "$OUT/data" --n 2000 --size 128 --seed 0 --force

echo "== 2/4 training, 3 minutes of wall clock at most"
python train/train.py --data "$OUT/data" --out "$OUT/run" --max-minutes 2.5 \
  --load-size 0 --crop-size 96 --eval-policy center-crop --eval-size 128 \
  --batch-size 32 --steps-per-epoch 25 --workers 1 --seed 0

echo "== 3/4 evaluation of the best checkpoint on the held-out split"
python train/evaluate.py "$OUT/run/best.pt" --data "$OUT/data/val" -o "$OUT/eval.json"

echo "== 4/4 inference: one record per file"
python runtime/infer.py --checkpoint "$OUT/run/best.pt" "$OUT/data/val" --format csv -o "$OUT/scores.csv"
head -n 4 "$OUT/scores.csv"

REF=../shared/reference
if [ -f "$REF/lfm_upstream.pth" ]; then
  echo "== upstream's checkpoint on upstream's reference images"
  python runtime/infer.py --checkpoint "$REF/lfm_upstream.pth" "$REF/images" --format table
fi
echo "== done: data in $OUT/data, checkpoints in $OUT/run, figures in $OUT/eval.json, scores in $OUT/scores.csv"
