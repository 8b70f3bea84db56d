#!/usr/bin/env bash
# The GPU checks of the kernels, in one call (a lent GPU machine: torch+CUDA, Triton, cuda-python;
# no TensorRT needed). Runs the kernels natively against their references, launches the PTX
# artifacts compiled on the CPU machine through cuda-python exactly as TensorRT's AOT path would,
# and measures NPR bandwidth (vs a device-to-device copy) and Top-K pooling (vs torch.topk).
#
#   On the CPU machine first:  python -m lfm.kernels.aot --out aot_artifacts
#   On the GPU machine:        bash benchmarks/gpu_checks.sh [--quick]
# Results land in benchmarks/results/bench_kernels.{json,md} (and $OUT/results when $OUT is set).
set -x
export PYTHONUNBUFFERED=1
python3 -c 'import tensorrt' 2>&1 | tail -1; ldconfig -p | grep -c nvinfer   # is TensorRT there after all?
nvidia-smi --query-gpu=name,driver_version,compute_cap --format=csv,noheader
python -c "import lfm.kernels" 2>/dev/null || pip install --no-deps -q -e .
LFM_AOT_DIR=${LFM_AOT_DIR:-$([ -d aot_artifacts ] && echo aot_artifacts)} python -m pytest -q -rs tests/test_kernels.py 2>&1 | tail -25
python benchmarks/bench_kernels.py "$@" 2>&1 | tail -40
if [ -n "${OUT:-}" ]; then mkdir -p "$OUT/results" && cp benchmarks/results/bench_kernels.* "$OUT/results/" 2>/dev/null; fi
