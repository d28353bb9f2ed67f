#!/usr/bin/env bash
# The GPU checks of the performance issue, as one command for a session lent a GPU machine:
#   1. `overparam bench` on CUDA (our trainer and probe vs the ordinary way, FLOP/s vs matmul peak),
#      with torch.profiler's top operators of each phase;
#   2. the paper preset, all nine rates, seed 0, timed end to end, then every run's phase times and
#      checks (benchmarks/gpu_summary.py).
#
# Usage, from the repository root on the GPU machine:
#   bash benchmarks/gpu_check.sh DATA_DIR OUT [JOBS [FLAGS...]]
# DATA_DIR holds MNIST/raw/ (carry it: that machine reaches no network); OUT receives bench.csv, the
# profiles, the logs and phases.csv; JOBS runs share the GPU (default 3); FLAGS go to both the bench and
# the paper preset: none (fp32, eager), or any of --precision bf16 and --compile, e.g.
#   bash benchmarks/gpu_check.sh data out 3 --precision bf16 --compile
# That machine's own python3 has PyTorch and the other dependencies: nothing is installed, the package
# runs from src/. The run store goes to /tmp, so OUT stays small enough to come back.
set -euo pipefail
data=$1
out=$2
jobs=${3:-3}
flags=("${@:4}")
mkdir -p "$out"
export PYTHONPATH=src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"

python3 -m overparam bench "${flags[@]}" --device cuda --data-dir "$data" --out "$out/bench.csv" --profile "$out" \
    2>&1 | tee "$out/bench.log"

start=$(date +%s)
status=0
python3 -m overparam reproduce --preset paper --jobs "$jobs" "${flags[@]}" --device cuda \
    --data-dir "$data" --store /tmp/overparam-store --out /tmp/overparam-paper --no-report \
    2>&1 | tee "$out/paper.log" || status=$?
echo "paper preset, $jobs jobs, flags '${flags[*]}': exit $status after $(($(date +%s) - start)) s" | tee -a "$out/paper.log"

python3 benchmarks/gpu_summary.py /tmp/overparam-paper /tmp/overparam-store "$data" "$out/phases.csv"
exit "$status"
