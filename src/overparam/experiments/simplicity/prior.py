"""The prior P(f): sample the network's parameters `draws` times and count every distinct function on the
whole cube, streaming. Draws go in batches, each from its own generator (`network.batch_generator`); after
every `checkpoint_every` batches the counts so far are merged and saved (partial.npz), so a killed sampling
resumes where it stopped and gives exactly the counts of an uninterrupted one. Memory is bounded by the
distinct functions (plus one checkpoint's keys), not by the draws.

functions.npz: keys [M, W] int64 (`boolean.pack`, sorted), counts [M] int64, complexity [M] float64
(`boolean.lz_complexity`, bits) and ones [M] int64, one row per distinct function."""

import io
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from overparam.experiments.simplicity.boolean import complexities, inputs, pack, strings
from overparam.experiments.simplicity.network import Architecture, batch_generator, forward, sample_parameters
from overparam.store.files import file_record, read_verified, write_npz
from overparam.store.steps import Step, StepContext, content_id


def merge_counts(
    keys: np.ndarray, counts: np.ndarray, more_keys: np.ndarray, more_counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Two tables of function counts (keys [M, W] int64, counts [M]) -> one, each key once, keys sorted
    (lexicographically by word)."""
    every, tally = np.concatenate([keys, more_keys]), np.concatenate([counts, more_counts])
    if len(every) == 0:
        return every, tally
    order = np.lexsort(every.T[::-1])
    every, tally = every[order], tally[order]
    starts = np.flatnonzero(np.r_[True, (every[1:] != every[:-1]).any(axis=1)])
    return every[starts], np.add.reduceat(tally, starts)


@dataclass(frozen=True)
class PriorStep(Step):
    """`draws` functions of random networks of `architecture`, drawn `batch` at a time from `seed`."""

    architecture: Architecture
    draws: int
    batch: int
    seed: int
    checkpoint_every: int = field(default=50, compare=False)  # batches; how, not what: not in the id
    kind = "simplicity-prior"

    def step_id(self) -> str:
        return f"simplicity/{content_id(self.kind, {**self.settings(), 'seed': self.seed})}"

    def settings(self) -> dict[str, Any]:
        return {"architecture": asdict(self.architecture), "draws": self.draws, "batch": self.batch}

    def compute(self, context: StepContext) -> dict[str, Any]:
        length = 2**self.architecture.n_bits
        partial = context.folder / "partial.npz"
        keys, counts, start = load_partial(partial, words=-(-length // 64))
        resumed_from, started, cpu = start, time.perf_counter(), time.process_time()
        points = inputs(n_bits=self.architecture.n_bits).to(context.device)
        batches = -(-self.draws // self.batch)
        pending: list[torch.Tensor] = []
        bar = tqdm(
            total=batches, initial=start, unit="batch", desc="prior", disable=not context.options.progress
        )
        for index in range(start, batches):
            count = min(self.batch, self.draws - index * self.batch)
            generator = batch_generator(seed=self.seed, index=index, device=context.device)
            parameters = sample_parameters(
                self.architecture, count=count, generator=generator, device=context.device
            )
            pending.append(pack(forward(parameters, points) > 0))
            bar.update()
            if len(pending) == self.checkpoint_every or index == batches - 1:
                found, times = torch.unique(torch.cat(pending), dim=0, return_counts=True)
                keys, counts = merge_counts(keys, counts, found.cpu().numpy(), times.cpu().numpy())
                pending = []
                save_partial(partial, keys=keys, counts=counts, next_batch=index + 1)
        bar.close()
        sampling = time.perf_counter() - started
        texts = strings(keys, length=length)
        complexity = complexities(texts, workers=torch.get_num_threads())
        ones = np.array([text.count("1") for text in texts], dtype=np.int64)
        path = context.folder / "functions.npz"
        write_npz(path, keys=keys, counts=counts, complexity=complexity, ones=ones)
        return {
            "settings": self.settings(),
            "seed": self.seed,
            "distinct_functions": len(keys),
            "resumed_from_batch": resumed_from,
            "sampling_seconds": sampling,
            "complexity_seconds": time.perf_counter() - started - sampling,
            "cpu_seconds": time.process_time() - cpu,  # this process's; wall time inflates on a busy machine
            **file_record([path]),
        }

    def tidy(self, folder: Path) -> None:
        (folder / "partial.npz").unlink(missing_ok=True)


def save_partial(path: Path, *, keys: np.ndarray, counts: np.ndarray, next_batch: int) -> None:
    """The counts after batches [0, next_batch), atomically."""
    write_npz(path, keys=keys, counts=counts, next_batch=np.array(next_batch))


def load_partial(path: Path, *, words: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(keys, counts, next batch) of a saved partial count, or an empty table at batch 0."""
    if not path.exists():
        return np.zeros((0, words), dtype=np.int64), np.zeros(0, dtype=np.int64), 0
    with np.load(path) as saved:
        return saved["keys"], saved["counts"], int(saved["next_batch"])


def load_functions(step: PriorStep, store: Path) -> dict[str, np.ndarray]:
    """The arrays of a finished prior step's functions.npz (keys, counts, complexity, ones), checked against
    the step's record."""
    data = read_verified(step.record(store), "functions.npz")
    with np.load(io.BytesIO(data)) as saved:
        return {name: saved[name] for name in saved.files}
