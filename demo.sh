#!/usr/bin/env bash
# The main job, end to end on the CPU (about 5 minutes on 2 cores): synthetic data -> training ->
# evaluation -> ONNX export (fp32 and INT8, each verified) -> scoring (--backend auto: ONNX Runtime or OpenVINO).
# Usage: bash demo.sh [OUT]   (default OUT: demo/)
set -euo pipefail
cd "$(dirname "$0")"
OUT=${1:-demo}

echo "== 1/6 synthetic dataset (demo data, not a benchmark of real detectors)"
python train/make_synthetic.py "$OUT/data" --n 2000 --size 128 --seed 0 --force

echo "== 2/6 training, 3 minutes of wall clock at most"
python train/train.py --data "$OUT/data" --out "$OUT/run" --max-minutes 2.5 \
  --load-size 0 --crop-size 96 --eval-policy center-crop --eval-size 128 \
  --batch-size 32 --steps-per-epoch 25 --workers 1 --seed 0

echo "== 3/6 evaluation of the best checkpoint on the held-out split"
python train/evaluate.py "$OUT/run/best.pt" --data "$OUT/data/val" -o "$OUT/eval.json"

echo "== 4/6 export to ONNX (uint8 input, the default: the runtime hands over decoded bytes), verified against PyTorch"
python export/to_onnx.py "$OUT/run/best.pt" -o "$OUT/lfm.onnx"

echo "== 5/6 INT8 (QDQ) export, calibrated on training images, checked on held-out ones and a cross-domain stress set"
python export/to_onnx.py "$OUT/run/best.pt" -o "$OUT/lfm.int8.onnx" --int8 --calib "$OUT/data/train"

echo "== 6/6 inference (INT8, --backend auto: OpenVINO where installed): one record per file"
python runtime/infer.py --model "$OUT/lfm.int8.onnx" "$OUT/data/val" --format csv -o "$OUT/scores.csv"
head -n 4 "$OUT/scores.csv"

REF=../shared/reference
if [ -f "$REF/lfm_upstream.pth" ]; then
  echo "== upstream's checkpoint on upstream's reference images"
  python runtime/infer.py --checkpoint "$REF/lfm_upstream.pth" "$REF/images" --format table
fi
echo "== done: data $OUT/data; checkpoints $OUT/run; evaluation $OUT/eval.json;"
echo "   models $OUT/lfm.onnx, $OUT/lfm.int8.onnx (verification reports beside them, *.report.json); scores $OUT/scores.csv"
