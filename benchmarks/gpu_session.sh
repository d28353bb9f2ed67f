#!/usr/bin/env bash
# Everything a session lent a GPU machine runs, as one command within its device time:
#   1. the CUDA tests (deterministic kernels for every model; a study made twice on CUDA gives the same
#      tables, fp32 and bf16), log in OUT/cuda-tests.log;
#   2. benchmarks/gpu_check.sh: the bench, the paper preset until SECONDS are nearly spent, the report and the
#      per-phase table.
# Everything is written to /tmp/gpu-out and packed into OUT/gpu-results.tar.gz every 20 s (the device tool
# returns at most 8 files); the small tables and logs are copied to OUT at the end.
# Usage, from the repository root on the GPU machine:
#   bash benchmarks/gpu_session.sh DATA_DIR OUT SECONDS [JOBS [FLAGS...]]
set -uo pipefail
data=$1
final=$(realpath -m "$2")
out=/tmp/gpu-out
seconds=$3
start=$(date +%s)
mkdir -p "$out" "$final"
export PYTHONPATH=src PYTHONUNBUFFERED=1 OVERPARAM_DATA=$data
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_models.py -k cuda 2>&1 \
    | tee "$out/cuda-tests.log"
# training stops 150 s before the end: gathering, the summary, the analysis and the report fit in that.
DEADLINE=$((start + seconds - 150)) PACK_TO=$final bash benchmarks/gpu_check.sh "$data" "$out" "${@:4}"
status=$?
cp "$out"/{cuda-tests.log,bench.csv,paper.log,phases.csv,runs.csv} "$final"/ 2>/dev/null
exit $status
