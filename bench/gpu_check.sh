#!/usr/bin/env bash
# The GPU checks of issue 4, in one go, on a CUDA machine that already has torch and torchvision:
# the CUDA tests, then the GPU benchmarks. Installs nothing from the network: the service's other
# dependencies come from wheels in .whl/ when that folder exists (see README, "Performance").
#
#     OUT=bench/results bash bench/gpu_check.sh      # about 8 minutes on one H100 (8.0 with service_w2 in the small run)
#
# Writes under $OUT (default bench/results): gpu_info.csv, gpu_tests.log, runtimes_gpu.{json,png,log}, postprocess_gpu.json,
# compare_gpu.{json,png,log}, and compare_gpu_small.{json,png} when the trained store artifacts/models
# is there (its log goes on compare_gpu.log): 11 files.
# Exits non-zero if any step failed.
# The serving benchmark uses the ResNet-50 architectures, untrained (the cost per image of trained
# ones): the small default models take 1-9 ms per image on such a GPU, too little to measure the GPU
# path rather than HTTP and image decoding.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/densepred-site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/densepred-site:$PWD
else
  export PYTHONPATH=$PWD
fi
status=0
step() {  # step NAME SECONDS CMD...: run with a time limit, log, remember a failure
  local name=$1 limit=$2
  shift 2
  echo "== $name ($(date +%T))"
  if ! timeout "$limit" "$@"; then
    echo "!! $name failed"
    status=1
  fi
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$OUT/gpu_info.csv" 2>&1
"$PYTHON" -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__,
  "cuda", torch.version.cuda, torch.cuda.get_device_name(0))' >>"$OUT/gpu_info.csv" 2>&1

step "GPU tests" 300 "$PYTHON" -m pytest -m gpu -q -s -p no:cacheprovider -o addopts="-ra" \
  tests/models/test_predictors_cuda.py tests/models/test_runtimes_cuda.py tests/service/test_service_cuda.py tests/service/test_inference_workers.py tests/trainer/test_engine.py \
  >"$OUT/gpu_tests.log" 2>&1
tail -5 "$OUT/gpu_tests.log"

# Issue 18: every runtime candidate (fp32/fp16/bf16, NHWC, batch norm folded) against fp32 eager, and the
# one the selection chooses, on the default small models (untrained); ONNX Runtime only where installed.
step "runtimes benchmark" 240 "$PYTHON" bench/runtimes.py --rounds 5 --out "$OUT/runtimes_gpu" --device cuda \
  >"$OUT/runtimes_gpu.log" 2>&1
tail -3 "$OUT/runtimes_gpu.log"

step "post-processing benchmark" 90 "$PYTHON" bench/postprocess.py --device cuda --repeats 30 \
  --out "$OUT/postprocess_gpu.json"

# service_w2: two batches of a model in flight, so that one batch's host work (answers, transfers)
# overlaps the other's GPU work. service_r2: two service processes sharing the GPU (replicas), so that
# their host work (HTTP, decoding, answers) runs in parallel rather than under one interpreter lock.
step "serving benchmark" 330 "$PYTHON" bench/compare.py --device cuda --tasks instances segment \
  --arch instances=maskrcnn_resnet50_fpn segment=fcn_resnet50 --systems service batch1 service_w2 service_r2 \
  --concurrency 1 32 --rates 1.0 --seconds 4 --raw-seconds 3 --warmup-s 2 --max-batch 32 \
  --setting max_batch_pixels=40000000 \
  --out "$OUT/compare_gpu" >"$OUT/compare_gpu.log" 2>&1
tail -5 "$OUT/compare_gpu.log"

# The embedded default (small) segmentation model: ~1.5 ms per image here, so this shows the host path.
if [ -d artifacts/models ]; then
  step "serving benchmark, small models" 150 "$PYTHON" bench/compare.py --device cuda --tasks segment \
    --systems service service_r2 --concurrency 1 8 32 --rates 1.0 --seconds 4 --raw-seconds 3 \
    --warmup-s 2 --max-batch 32 --out "$OUT/compare_gpu_small" >>"$OUT/compare_gpu.log" 2>&1
  tail -3 "$OUT/compare_gpu.log"
fi
exit $status
