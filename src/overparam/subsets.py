"""Models trained on part of a run's training images (a core step every experiment may use): K-fold models
(confident learning) and models on random subsets (Feldman and Zhang's memorisation estimate).

A `SubsetTraining` is a step of the run store: the run's architecture and training settings (schedule,
epochs, batch size, learning rate, adversarial training) on a subset of the run's training images with their
assigned labels, then the softmax probabilities of every training image of the run, in the subset or not.
"""

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from overparam.config import RunConfig
from overparam.data import NORMALIZATION
from overparam.mislabel import keyed_generator
from overparam.models import build_model, predict_with_probabilities
from overparam.runs import PreparedRun, prepared_run
from overparam.store.files import file_record, with_keys, write_csv, write_npz
from overparam.store.steps import Step, StepContext, content_id
from overparam.train import TrainingData, train

log = logging.getLogger(__name__)
SCHEMES = ("fold", "sample")


def fold_of(assigned_labels: np.ndarray, *, folds: int, key: tuple) -> np.ndarray:
    """The fold [N] int64 in 0..folds-1 of each image, stratified by assigned label (each class dealt round
    robin over the folds in a keyed random order, as StratifiedKFold with shuffling): every fold holds about
    1/folds of every class."""
    fold = np.empty(len(assigned_labels), dtype=np.int64)
    rng = keyed_generator("folds", *key, folds)
    for label in np.unique(assigned_labels):
        members = rng.permutation(np.flatnonzero(assigned_labels == label))
        fold[members] = np.arange(len(members)) % folds
    return fold


def sample_of(n: int, *, number: int, fraction: float, key: tuple) -> np.ndarray:
    """Membership [N] bool of random subset `number`: round(fraction * N) images drawn without replacement."""
    chosen = keyed_generator("memorisation-sample", *key, fraction, number).choice(
        n, size=round(fraction * n), replace=False
    )
    inside = np.zeros(n, dtype=bool)
    inside[chosen] = True
    return inside


@dataclass(frozen=True)
class SubsetTraining(Step):
    """One model on part of `run`'s training images: scheme "fold" holds out fold `part` of `parts`;
    scheme "sample" trains on random subset `part` (of `parts`, a fraction `fraction` of the images)."""

    run: RunConfig
    scheme: str
    part: int
    parts: int
    fraction: float = 0.0
    kind = "subset-training"

    def settings(self) -> dict[str, Any]:
        return {
            "run_id": self.run.run_id(),
            "scheme": self.scheme,
            "part": self.part,
            "parts": self.parts,
            "fraction": self.fraction if self.scheme == "sample" else 0.0,
        }

    def step_id(self) -> str:
        return f"{self.run.run_id()}/{content_id(self.kind, self.settings())}"

    def members(self, prepared: PreparedRun) -> np.ndarray:
        """[N] bool: which of the run's training images this model trains on."""
        run = self.run
        key = (run.dataset, run.train_size, run.rate, run.seed)
        if self.scheme == "fold":
            return fold_of(prepared.assigned_labels, folds=self.parts, key=key) != self.part
        return sample_of(len(prepared.train_index), number=self.part, fraction=self.fraction, key=key)

    def compute(self, context: StepContext) -> dict[str, Any]:
        run = self.run
        prepared, splits = prepared_run(run, context)
        inside = self.members(prepared)
        device = context.device
        everything = splits.train_images[torch.as_tensor(prepared.train_index, device=device)]
        chosen = torch.as_tensor(np.flatnonzero(inside), device=device)
        test = torch.as_tensor(prepared.test_index, device=device)
        data = TrainingData(
            images=everything[chosen],
            assigned_labels=torch.as_tensor(prepared.assigned_labels, device=device)[chosen],
            mislabelled=torch.as_tensor(prepared.mislabelled, device=device)[chosen],
            test_images=splits.test_images[test],
            test_labels=splits.test_labels[test],
        )
        mean, std = NORMALIZATION[run.dataset]
        initial = keyed_generator("subset-init", run.seed, self.scheme, self.part).integers(2**62)
        torch.manual_seed(int(initial))  # each subset model starts from its own initialisation
        model = build_model(name=run.model, width=run.width, mean=mean, std=std).to(device)
        start = time.perf_counter()
        result = train(
            model=model,
            data=data,
            run=run,
            checkpoint=context.folder / "checkpoint.pt",
            progress=context.options.progress,
        )
        _, probabilities = predict_with_probabilities(model, everything, precision=run.precision)
        seconds = time.perf_counter() - start
        predictions, metrics = context.folder / "subset.npz", context.folder / "metrics.csv"
        write_npz(predictions, inside=inside, probabilities=probabilities.cpu().numpy())
        write_csv(with_keys(run.keys(), pd.DataFrame(result.metrics)), metrics)
        last = result.metrics[-1]
        log.info(
            "trained %s on %d of %d images (%s %d of %d): train acc %.4f, test acc %.4f, %.0f s",
            run.run_id(),
            int(inside.sum()),
            len(inside),
            self.scheme,
            self.part,
            self.parts,
            last["train_acc"],
            last["test_acc"],
            seconds,
        )
        return {
            **self.settings(),
            "n_subset": int(inside.sum()),
            "epochs": last["epoch"],
            "train_acc": last["train_acc"],
            "test_acc": last["test_acc"],
            "reached_target": bool(last["train_acc"] >= run.target_acc),
            "seconds": seconds,
            **file_record([predictions, metrics]),
        }

    def tidy(self, folder: Path) -> None:
        (folder / "checkpoint.pt").unlink(missing_ok=True)
