#!/usr/bin/env bash
# The GPU checks in one script, for a machine with a CUDA GPU (CI has none):
# the CUDA tests, then bench_extremes with the products and the locking LOBPCG on the GPU
# (the GPU target: n = 2000, both ends + SLQ in under a minute).
#   OUT=DIR LARGE=2000 DEVICE=cuda bash benchmarks/run_gpu.sh
# Logs and the JSON record go to $OUT (default out-gpu/).
set -o pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=src PYTHONUNBUFFERED=1
OUT=${OUT:-out-gpu}
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"; "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'; } | tee "$OUT/gpu.txt"
"$PY" -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$OUT/test_gpu.log"
"$PY" benchmarks/bench_extremes.py --sizes ${SIZES:-50} --k 10 --budget 5 --large "${LARGE:-2000}" --large-k 20 \
    --device "$DEVICE" --target 60 --out "$OUT/extremes_$DEVICE.json" 2>&1 | tee "$OUT/extremes_$DEVICE.log"
