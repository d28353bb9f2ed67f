"""Label noise on the cube: the paper's question measured. Each training flips the labels of `flips`
training inputs (its own random choice) and trains to zero error on the flipped labels; then, for every
training input p and each held-out Hamming neighbour q of it where the clean rule gives q the label it gives
p (the informative pairs: elsewhere "follows p's label" and "follows the rule" are the same prediction),
does the learned function follow p's training label at q?

For a flipped p, following its label means disagreeing with the clean rule at q; for an unflipped p the same
disagreement is the baseline. "A simple rule plus a lookup table of exceptions" predicts no more
disagreement next to flipped points than next to clean ones (the lookup function, the clean target with the
flipped training labels, is the clean rule on every held-out input); a model that absorbs the noise into its
rule predicts more.

noise.csv: one row per training: flips, training, epoch (reached zero error; -1 never), held-out error
against the clean rule, complexity of the learned function and of the lookup function, flipped_pairs and
flipped_follow, clean_pairs and clean_follow (pairs, and those whose held-out input disagrees with the rule).
"""

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from overparam.experiments.simplicity.boolean import complexities, inputs, lz_complexity, neighbours
from overparam.experiments.simplicity.network import Architecture, batch_generator
from overparam.experiments.simplicity.sgd import Task
from overparam.experiments.simplicity.targets import target
from overparam.experiments.simplicity.training import Training, train_to_zero_error
from overparam.store.files import file_record, write_csv
from overparam.store.steps import Step, StepContext, content_id


def informative_pairs(
    *, clean: np.ndarray, train_index: np.ndarray, n_bits: int
) -> tuple[np.ndarray, np.ndarray]:
    """The (training input, held-out neighbour) pairs on which the clean rule agrees: the position of the
    training input in train_index [Q] and the held-out input [Q]."""
    held_out = np.ones(2**n_bits, dtype=bool)
    held_out[train_index] = False
    near = neighbours(n_bits=n_bits)[train_index]  # [P, n_bits]
    position = np.repeat(np.arange(len(train_index)), n_bits)
    other = near.ravel()
    keep = held_out[other] & (clean[other] == np.repeat(clean[train_index], n_bits))
    return position[keep], other[keep]


def neighbour_measures(
    *, learned: np.ndarray, clean: np.ndarray, train_index: np.ndarray, flipped: np.ndarray, n_bits: int
) -> pd.DataFrame:
    """Per training (learned [R, 2**n_bits] 0/1, flipped [R, P] bool over train_index [P]; clean
    [2**n_bits] 0/1): held_out_error (fraction of held-out inputs where learned != clean), flipped_pairs,
    flipped_follow, clean_pairs, clean_follow (see the module's docstring)."""
    held_out = np.setdiff1d(np.arange(2**n_bits), train_index)
    position, other = informative_pairs(clean=clean, train_index=train_index, n_bits=n_bits)
    differs = learned[:, other] != clean[other]  # [R, Q]: the held-out input follows p's flipped label
    is_flipped = flipped[:, position]
    return pd.DataFrame(
        {
            "held_out_error": (learned[:, held_out] != clean[held_out]).mean(axis=1),
            "flipped_pairs": is_flipped.sum(axis=1),
            "flipped_follow": (differs & is_flipped).sum(axis=1),
            "clean_pairs": (~is_flipped).sum(axis=1),
            "clean_follow": (differs & ~is_flipped).sum(axis=1),
        }
    )


@dataclass(frozen=True)
class NoiseStep(Step):
    """`trainings` trainings on `task` with `flips` of its training labels flipped, from `seed`."""

    architecture: Architecture
    training: Training
    task: Task
    flips: int
    trainings: int
    seed: int
    kind = "simplicity-noise"

    def settings(self) -> dict[str, Any]:
        return {
            "architecture": asdict(self.architecture),
            "training": asdict(self.training),
            "task": asdict(self.task),
            "flips": self.flips,
            "trainings": self.trainings,
        }

    def step_id(self) -> str:
        return f"simplicity/{content_id(self.kind, {**self.settings(), 'seed': self.seed})}"

    def compute(self, context: StepContext) -> dict[str, Any]:
        device, n_bits = context.device, self.architecture.n_bits
        train_index, clean = self.task.train_index(), target(self.task.target)
        generator = batch_generator(seed=self.seed, index=self.flips, device=device)
        order = torch.argsort(
            torch.rand(self.trainings, len(train_index), generator=generator, device=device)
        )
        flipped = torch.zeros(self.trainings, len(train_index), dtype=torch.bool, device=device)
        flipped.scatter_(1, order[:, : self.flips], True)
        labels = torch.as_tensor(clean[train_index], device=device).bool() ^ flipped
        learned, epochs = train_to_zero_error(
            architecture=self.architecture,
            training=self.training,
            cube=inputs(n_bits=n_bits).to(device),
            train_index=torch.as_tensor(train_index, device=device),
            labels=labels.long(),
            generator=generator,
            progress=context.options.progress,
        )
        learned_bits, flipped_bits = learned.cpu().numpy().astype(np.uint8), flipped.cpu().numpy()
        lookup = np.tile(clean, (self.trainings, 1))
        lookup[:, train_index] ^= flipped_bits.astype(np.uint8)
        table = neighbour_measures(
            learned=learned_bits, clean=clean, train_index=train_index, flipped=flipped_bits, n_bits=n_bits
        )
        table.insert(0, "epoch", epochs.cpu().numpy())
        table.insert(0, "training", np.arange(self.trainings))
        table.insert(0, "flips", self.flips)
        table.insert(0, "target", self.task.target)
        table["complexity"] = complexities([_text(row) for row in learned_bits])
        table["lookup_complexity"] = complexities([_text(row) for row in lookup])
        table["target_complexity"] = lz_complexity(_text(clean))
        path = context.folder / "noise.csv"
        write_csv(table, path)
        return {"settings": self.settings(), "seed": self.seed, **file_record([path])}


def _text(bits: np.ndarray) -> str:
    return (bits.astype(np.uint8) + ord("0")).tobytes().decode()
