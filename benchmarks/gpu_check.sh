#!/usr/bin/env bash
# The GPU checks of the performance issue, as one command for a session lent a GPU machine:
#   1. `overparam bench` on CUDA (our trainer and probe vs the ordinary way, FLOP/s vs matmul peak),
#      with torch.profiler's top operators of each phase;
#   2. the paper preset, all nine rates, seed 0, timed end to end, then every run's phase times.
#
# Usage, from the repository root on the GPU machine:
#   bash benchmarks/gpu_check.sh DATA_DIR OUT [JOBS] [PRECISION]
# DATA_DIR holds MNIST/raw/ (carry it: that machine reaches no network); OUT receives bench.csv, the
# profiles, the logs and phases.csv; JOBS runs share the GPU (default 3); PRECISION fp32 (default) or bf16.
# That machine's own python3 has PyTorch and the other dependencies: nothing is installed, the package
# runs from src/. The run store goes to /tmp, so OUT stays small enough to come back.
set -euo pipefail
data=$1
out=$2
jobs=${3:-3}
precision=${4:-fp32}
mkdir -p "$out"
export PYTHONPATH=src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"

python3 -m overparam bench --device cuda --data-dir "$data" --out "$out/bench.csv" --profile "$out" \
    2>&1 | tee "$out/bench.log"

start=$(date +%s)
status=0
python3 -m overparam reproduce --preset paper --jobs "$jobs" --precision "$precision" --device cuda \
    --data-dir "$data" --store /tmp/overparam-store --out /tmp/overparam-paper --no-report \
    2>&1 | tee "$out/paper.log" || status=$?
echo "paper preset, $jobs jobs, $precision: exit $status after $(($(date +%s) - start)) s" | tee -a "$out/paper.log"

python3 - "$out/phases.csv" <<'PYTHON'
import json, sys
from pathlib import Path
import pandas as pd

runs_table = Path("/tmp/overparam-paper/runs.csv")  # written by reproduce after every finished run
if not runs_table.exists():
    sys.exit("no run finished: see paper.log")
table = pd.read_csv(runs_table)
probes = {
    run_id: [json.loads(p.read_text()) for p in Path("/tmp/overparam-store", run_id).glob("probe-*/probe.json")]
    for run_id in table["run_id"]
}
table["probe_seconds"] = [found[0]["seconds"] if found else None for found in probes.values()]
table["fp32_agreement"] = [(found[0].get("fp32_check") or {}).get("agreement") if found else None for found in probes.values()]
columns = ["run_id", "rate", "epochs", "reached_target", "train_acc", "train_seconds", "probe_seconds", "fp32_agreement"]
table[columns].to_csv(sys.argv[1], index=False)
print(table[columns].to_string(index=False))
print("sums:", table[["train_seconds", "probe_seconds"]].sum().to_dict())
PYTHON
exit "$status"
