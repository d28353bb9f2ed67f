"""Wall time of the lottery preset's step graph, scaled down, on the local executor with `--jobs 1` (every
step in this process with all of PyTorch's threads) and `--jobs 2` (two long-lived worker processes with
half the threads each), each from an empty temporary run store; prints both and their ratio.

The graph is the preset's own (every run: its training, its probe, and at each round the IMP, reinit,
random and dual tickets, each probed; a round's tickets need the round before's IMP ticket) with fewer
training images, epochs and rounds, and the dual ticket's extrusion shortened with the training. Data is
read from `--data-dir` (MNIST), never downloaded.

    python benchmarks/pool.py --train-size 1000 --max-epochs 10 --rounds 2

To time the executor of another checkout (one fresh process per step, before the pool), run this file with
that checkout's src/ first on PYTHONPATH.
"""

import argparse
import math
import os
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

from overparam.config import resolve
from overparam.store.executors import ExecutorOptions, execute_steps, local_threads
from overparam.store.steps import RunOptions, Step, with_needs
from overparam.study import study_steps

DEFAULT_DATA = Path(
    os.environ.get("OVERPARAM_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data"
)


def longest_chain(steps: list[Step]) -> int:
    """The number of steps on the longest path of needs: what no number of workers runs side by side."""
    depth: dict[str, int] = {}
    for step in with_needs(steps):
        depth[step.step_id()] = 1 + max((depth[need.step_id()] for need in step.needs()), default=0)
    return max(depth.values())


def timed(steps: list[Step], *, jobs: int, data_dir: Path) -> float:
    """Seconds of wall time to compute `steps` with `jobs` local workers, in a fresh temporary store."""
    store = Path(tempfile.mkdtemp(prefix=f"overparam-pool-{jobs}-"))
    try:
        options = RunOptions(store=str(store), data_dir=str(data_dir), download=False)
        began = time.perf_counter()
        outcomes = execute_steps(steps, options, ExecutorOptions(jobs=jobs))
        seconds = time.perf_counter() - began
    finally:
        shutil.rmtree(store)
    failed = [o for o in outcomes if o.status != "done"]
    if failed:
        raise SystemExit(f"--jobs {jobs}: {len(failed)} steps not done, the first: {failed[0]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="folder holding MNIST/raw")
    parser.add_argument("--train-size", type=int, default=1000, help="training images per run (preset: 3000)")
    parser.add_argument("--test-size", type=int, default=1000, help="test images per run (preset: 2000)")
    parser.add_argument("--max-epochs", type=int, default=10, help="epochs per training (preset: 60)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of pruning (preset: 6)")
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2], help="the arms, in order")
    arguments = parser.parse_args()

    preset = resolve(preset="lottery", overrides={})
    iterations = arguments.max_epochs * math.ceil(arguments.train_size / preset.batch_size)
    overrides = {
        "train_size": arguments.train_size,
        "test_size": arguments.test_size,
        "max_epochs": arguments.max_epochs,
        "lottery_rounds": arguments.rounds,
        # The dual ticket's extrusion as long as one training, as in the preset (1250 iterations of 1440).
        "dual_increment": preset.dual_ceiling * preset.dual_interval / iterations,
    }
    runs = resolve(preset="lottery", overrides=overrides).runs()
    steps = with_needs(study_steps(runs))
    kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(Counter(s.kind for s in steps).items()))
    print(f"lottery preset with {overrides}: {len(runs)} runs, {len(steps)} steps ({kinds})")
    print(f"longest chain of needs: {longest_chain(steps)} steps; {os.cpu_count()} CPUs")
    print(f"load average before: {' '.join(f'{load:.2f}' for load in os.getloadavg())}")
    seconds = {}
    for jobs in arguments.jobs:
        seconds[jobs] = timed(steps, jobs=jobs, data_dir=arguments.data_dir)
        threads = local_threads(jobs)
        print(
            f"--jobs {jobs} ({threads} of {torch.get_num_threads()} threads per step): {seconds[jobs]:.1f} s"
        )
    if 1 in seconds and 2 in seconds:
        print(f"ratio jobs 1 / jobs 2: {seconds[1] / seconds[2]:.2f}")
    print(f"load average after: {' '.join(f'{load:.2f}' for load in os.getloadavg())}")


if __name__ == "__main__":
    main()
