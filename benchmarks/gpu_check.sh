#!/usr/bin/env bash
# The GPU checks, as one command for a session lent a GPU machine:
#   1. `overparam bench` on CUDA (our trainer and probe vs the ordinary way, FLOP/s vs matmul peak),
#      with torch.profiler's top operators of each phase;
#   2. the paper preset (27 runs: nine rates, seeds 0, 1, 2), one seed after another so that a run cut off
#      by DEADLINE still leaves whole seeds, timed; its tables are packed into OUT/paper-tables.tar.gz after
#      every finished run, so what finished comes back even if the machine is taken away;
#   3. the report of what finished (timed: analysis and report are phases of the per-phase table), and
#      every run's phase times and checks (benchmarks/gpu_summary.py -> OUT/phases.csv).
#
# Usage, from the repository root on the GPU machine:
#   DEADLINE=<epoch seconds> bash benchmarks/gpu_check.sh DATA_DIR OUT [JOBS [FLAGS...]]
# DATA_DIR holds MNIST/raw/ (carry it: that machine reaches no network); OUT receives the logs and tables;
# JOBS runs share the GPU (default 9: one wave per seed); PACK_TO (default OUT) receives gpu-results.tar.gz,
# refreshed every 20 s; DEADLINE (default: in 9 minutes) is when training
# stops so that the report and the summary still fit; FLAGS go to both the bench and the paper preset: none
# (fp32, eager), or any of --precision bf16 and --compile.
# That machine's own python3 has PyTorch and the other dependencies: nothing is installed, the package
# runs from src/. The run store goes to /tmp, so OUT stays small enough to come back.
set -uo pipefail
data=$1
out=$(realpath -m "$2")
jobs=${3:-9}
flags=("${@:4}")
deadline=${DEADLINE:-$(($(date +%s) + 540))}
preset=${PRESET:-paper}  # PRESET=smoke DEVICE=cpu tries the script on a machine without a GPU
device=${DEVICE:-cuda}
store=/tmp/overparam-store
study=/tmp/overparam-paper
mkdir -p "$out"
export PYTHONPATH=src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$out/gpu.txt"
left() { echo $((deadline - $(date +%s))); }
stamp() { echo "$(date +%s) $*" | tee -a "$out/phases.log"; }

stamp "bench start"
timeout 120 python3 -m overparam bench "${flags[@]}" --device "$device" --data-dir "$data" --out "$out/bench.csv" \
    --profile "$out/profile" --repeats 1 --epochs 1 ${BENCH_ARGS:-} 2>&1 | tee "$out/bench.log"
(cd "$out" && tar czf profiles.tar.gz profile && rm -r profile) 2>/dev/null
stamp "bench end"

pack_to=$(realpath -m "${PACK_TO:-$out}")
mkdir -p "$pack_to"
pack() {  # OUT's logs, the studies' tables (flips aside) and every finished run's records, in one file
    (cd /tmp && tar czf "$pack_to/gpu-results.tar.gz.tmp" --exclude='*.npz' --exclude='*.pt' \
        --exclude='flips.csv' --exclude='runs' --exclude='gpu-results.tar.gz*' \
        $(ls -d paper-seed? overparam-paper 2>/dev/null) "$out" \
        $(find overparam-store -maxdepth 3 \( -name training.json -o -name probe.json \
            -o -name metrics.csv -o -name curves.csv -o -name failed.json \) 2>/dev/null)) 2>/dev/null \
        && mv "$pack_to/gpu-results.tar.gz.tmp" "$pack_to/gpu-results.tar.gz"
}
(while sleep 20; do pack; done) &
packer=$!

start=$(date +%s)
status=0
finished_seeds=()
for seed in 0 1 2; do
    if [ "$(left)" -le 30 ]; then break; fi
    stamp "paper seed $seed start"
    timeout "$(left)" python3 -m overparam reproduce --preset "$preset" --seeds "$seed" --jobs "$jobs" "${flags[@]}" \
        --device "$device" --data-dir "$data" --store "$store" --out "/tmp/paper-seed$seed" --no-report \
        2>&1 | grep -v '|' | tee -a "$out/paper.log"
    code=${PIPESTATUS[0]}
    stamp "paper seed $seed end (exit $code)"
    if [ "$code" -eq 0 ]; then finished_seeds+=("$seed"); else status=$code; fi
done
echo "paper preset, $jobs jobs, flags '${flags[*]}': seeds ${finished_seeds[*]:-none} finished after" \
    "$(($(date +%s) - start)) s (exit $status)" | tee -a "$out/paper.log"

if [ ${#finished_seeds[@]} -gt 0 ]; then
    # Every run of the finished seeds is in the store: this only gathers their tables.
    python3 -m overparam reproduce --preset "$preset" --seeds "${finished_seeds[@]}" "${flags[@]}" \
        --device "$device" --data-dir "$data" --store "$store" --out "$study" --no-report 2>&1 \
        | grep -v '|' | tail -2 | tee -a "$out/paper.log"
    pack
    stamp "summary, analysis and report start"
    python3 benchmarks/gpu_summary.py "$study" "$store" "$data" "$out/runs.csv" 2>&1 | tee "$out/summary.log"
    stamp "summary, analysis and report end"
elif [ -f "/tmp/paper-seed$seed/runs.csv" ]; then
    # No whole seed: the summary, analysis and report of the runs of the seed that was cut off.
    python3 benchmarks/gpu_summary.py "/tmp/paper-seed$seed" "$store" "$data" "$out/runs.csv" 2>&1 \
        | tee "$out/summary.log"
fi
kill "$packer" 2>/dev/null
pack
exit "$status"
