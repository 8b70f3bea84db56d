#!/usr/bin/env bash
# Everything that needs a GPU, in one call (a lent GPU machine: torch + CUDA, Triton, cuda-python;
# no TensorRT needed, none installable there):
#   1. looks for TensorRT after all, and records the GPU's state;
#   2. tests/test_kernels.py natively on the GPU, including the AOT PTX artifacts compiled on the
#      CPU machine, launched through cuda-python exactly as TensorRT's AOT path would;
#   3. benchmarks/bench_kernels.py: NPR bandwidth vs a device-to-device copy, Top-K vs torch.topk,
#      the fused stem vs cuDNN; benchmarks/profile_gpu.py: the forward pass stage by stage;
#   4. benchmarks/bench.py: the GPU backends at 256 px, batches 1-1024, engine and end-to-end.
#   5. (step decode, issue 17) tests/test_resize.py -k native and tests/test_gpu_input.py natively
#      (pinned staging ring, nvJPEG vs libjpeg-turbo scores: flips, max |dlogit| printed with -s);
#      benchmarks/bench_decode.py: files to scores with upstream's checkpoint through the kernels
#      path (--model lfm_upstream.pth --kernels), CPU decoding by 4, 8, 16 threads or processes
#      and nvJPEG, on the reference JPEGs listed repeatedly and on generated 1024 px JPEGs, with
#      decode and no-op pipeline rows, the stage breakdown, the parent's CPU per image and the
#      decisions vs CPU decoding; the one-worker decode rates without a model
#      -> benchmarks/results/gpu_h200/{decode_reference,files_to_scores,decode_1024}.
#      Image counts fit the bounds (16 cores, ~1.4 ms per reference JPEG per core, 10-15 ms per
#      1024 px one): 60 + 90 + 30 + 135 + 60 s = 6.25 min at most.
#
#   On the CPU machine first:  python -m lfm.kernels.aot --out aot_artifacts
#   On the GPU machine:        bash benchmarks/gpu_checks.sh [RESULTS_DIR]
# Results: RESULTS_DIR/kernels/{bench_kernels,profile_gpu}.{json,md}, RESULTS_DIR/bench_gpu/bench.{json,md,*.png},
# RESULTS_DIR/gpu_checks.log (RESULTS_DIR: $OUT where set, else benchmarks/results/gpu).
# Each step has its own time limit, so one that hangs cannot take the others' results with it.
# GPU_STEPS="tests kernels profile bench decode" (the default: all) picks steps.
set -u
cd "$(dirname "$0")/.."
RES=${1:-${OUT:-benchmarks/results/gpu}}
mkdir -p "$RES"
exec > >(tee "$RES/gpu_checks.log") 2>&1
export PYTHONUNBUFFERED=1
PY=$(command -v python3 || command -v python)
step() { echo; echo "=== $* ($(date -u +%T))"; }
want() { [[ " ${GPU_STEPS:-tests kernels profile bench decode} " == *" $1 "* ]]; }

# import lfm without installing it (the GPU machine has no package index): a namespace package
# on PYTHONPATH that maps the folders as pyproject.toml does
if ! "$PY" -c "import lfm.kernels, lfm.train, lfm.runtime" 2>/dev/null; then
  ns=$(mktemp -d); mkdir -p "$ns/lfm"
  for d in train runtime export kernels; do ln -s "$PWD/$d" "$ns/lfm/$d"; done
  export PYTHONPATH="$ns${PYTHONPATH:+:$PYTHONPATH}"
fi

step "TensorRT here?"
"$PY" -c 'import tensorrt; print("tensorrt", tensorrt.__version__)' 2>&1 | tail -1
echo "libnvinfer entries in ldconfig: $(ldconfig -p | grep -c nvinfer)"
"$PY" -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__)'
nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv

step "kernel tests on the GPU (AOT artifacts from ${LFM_AOT_DIR:-aot_artifacts})"
export LFM_AOT_DIR=${LFM_AOT_DIR:-$([ -d aot_artifacts ] && echo "$PWD/aot_artifacts")}
want tests && timeout 120 "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_kernels.py
want tests && timeout 90 "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_cuda.py

step "kernel benchmark"
want kernels && timeout 120 "$PY" benchmarks/bench_kernels.py --output-dir "$RES/kernels"

step "stage profile"
want profile && timeout 60 "$PY" benchmarks/profile_gpu.py --output-dir "$RES/kernels"

step "model benchmark (GPU backends)"
want bench && timeout "${BENCH_TIMEOUT:-240}" "$PY" benchmarks/bench.py --output-dir "$RES/bench_gpu"
step "decode (issue 17): GPU tests; files to scores, CPU decode 1..16 workers vs --decode gpu"
H200=${H200_RES:-benchmarks/results/gpu_h200}
REF=${LFM_REFERENCE:-../shared/reference}  # as tests/conftest.py finds it: beside the checkout
mkdir -p "$H200"
want decode && timeout 60 "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_resize.py -k native
want decode && timeout 90 "$PY" -m pytest -q -s -rs -p no:cacheprovider tests/test_gpu_input.py \
  2>&1 | tee "$H200/test_gpu_input.log"  # its "nvJPEG vs libjpeg-turbo: N flips, max |dlogit|" line
# --block 1: one timed pass per case after one uncounted one (passes of 0.4-8 s need no more)
want decode && timeout 30 "$PY" benchmarks/bench_decode.py --images 600 --rounds 1 --block 1 --workers 1 \
  --modes threads,processes --batch-size 256 --output-dir "$H200/decode_reference"
want decode && timeout 135 "$PY" benchmarks/bench_decode.py --model "$REF/lfm_upstream.pth" --kernels --device cuda \
  --images 4000 --rounds 1 --block 1 --workers 4,8,16 --modes threads,processes,gpu --batch-size 256 \
  --output-dir "$H200/files_to_scores"
want decode && timeout 60 "$PY" benchmarks/bench_decode.py --model "$REF/lfm_upstream.pth" --kernels --device cuda \
  --images 600 --rounds 1 --block 1 --workers 8,16 --modes processes,gpu --generated-side 1024 --batch-size 64 \
  --output-dir "$H200/decode_1024"
step done
