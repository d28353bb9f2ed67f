"""The memorisation experiment's own work in the run store: each image's counts read from a run's random
subset models (`subset_counts`), and `RemovalTraining`, a step: the run's model retrained without the k most
memorised training images, or without k random ones (Feldman and Zhang 2020, section 3.3)."""

import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from overparam.config import RunConfig
from overparam.data import NORMALIZATION
from overparam.experiments.memorisation.estimate import memorisation_counts
from overparam.mislabel import keyed_generator
from overparam.models import build_model
from overparam.runs import prepared_run
from overparam.store.files import file_record, read_json, read_verified, with_keys, write_csv, write_npz
from overparam.store.steps import Step, StepContext, content_id
from overparam.subsets import SubsetTraining
from overparam.train import TrainingData, train

REMOVED = ("top", "random")


def samples(run: RunConfig) -> list[SubsetTraining]:
    """The run's random-subset models (the same steps the label-error scores' memorisation needs)."""
    m, fraction = run.memorisation_models, run.memorisation_fraction
    return [SubsetTraining(run, "sample", part, m, fraction) for part in range(m)]


def subset_counts(run: RunConfig, store: Path, assigned: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per training image of `run` (in the run's order): memorisation and its counts (estimate.py); and per
    subset model: n_subset, train_acc (its subset, assigned labels), test_acc, reached_target, seconds."""
    inside, correct, models = [], [], []
    for step in samples(run):
        record = step.record(store)
        with np.load(io.BytesIO(read_verified(record, "subset.npz"))) as saved:
            inside.append(saved["inside"])
            correct.append(saved["probabilities"].argmax(axis=1) == assigned)
        saved_record = read_json(record)
        result = saved_record.get("result", saved_record)
        models.append(
            {
                "part": step.part,
                **{
                    k: result.get(k)
                    for k in ("n_subset", "epochs", "train_acc", "test_acc", "reached_target", "seconds")
                },
            }
        )
    return memorisation_counts(np.array(inside), np.array(correct)), pd.DataFrame(models)


@dataclass(frozen=True)
class RemovalTraining(Step):
    """The run's architecture and training settings on its training images less k of them: `removed` "top"
    (the k with the highest memorisation estimate from the run's subset models; ties in a keyed random order)
    or "random" (k drawn at random). Top and random of one seed and `repeat` start from the same
    initialisation, so their difference is paired."""

    run: RunConfig
    removed: str
    k: int
    repeat: int = 0
    kind = "memorisation-removal"
    tables: ClassVar[dict[str, str]] = {"memorisation_removal": "removal.csv"}

    def settings(self) -> dict[str, Any]:
        return {"run_id": self.run.run_id(), "removed": self.removed, "k": self.k, "repeat": self.repeat}

    def needs(self) -> tuple[Step, ...]:
        return tuple(samples(self.run)) if self.removed == "top" else ()

    def step_id(self) -> str:
        return f"{self.run.run_id()}/{content_id(self.kind, self.settings(), self.needs())}"

    def chosen(self, memorisation: np.ndarray) -> np.ndarray:
        """Positions (into the run's training images) of the k images left out."""
        run, n = self.run, len(memorisation)
        order = keyed_generator(
            "removal-order", run.dataset, run.train_size, run.rate, run.seed, self.k, self.repeat
        ).permutation(n)
        if self.removed == "random":
            return np.sort(order[: self.k])
        values = np.nan_to_num(memorisation[order], nan=-np.inf)
        ranked = order[np.argsort(-values, kind="stable")]
        return np.sort(ranked[: self.k])

    def compute(self, context: StepContext) -> dict[str, Any]:
        run, device = self.run, context.device
        prepared, splits = prepared_run(run, context)
        assigned = prepared.assigned_labels
        memorisation = np.full(len(assigned), np.nan)
        if self.removed == "top":
            memorisation = subset_counts(run, context.store, assigned)[0]["memorisation"].to_numpy()
        left_out = self.chosen(memorisation)
        kept = np.setdiff1d(np.arange(len(assigned)), left_out)
        everything = splits.train_images[torch.as_tensor(prepared.train_index, device=device)]
        chosen = torch.as_tensor(kept, device=device)
        test = torch.as_tensor(prepared.test_index, device=device)
        data = TrainingData(
            images=everything[chosen],
            assigned_labels=torch.as_tensor(assigned, device=device)[chosen],
            mislabelled=torch.as_tensor(prepared.mislabelled, device=device)[chosen],
            test_images=splits.test_images[test],
            test_labels=splits.test_labels[test],
        )
        mean, std = NORMALIZATION[run.dataset]
        initial = keyed_generator("removal-init", run.seed, self.k, self.repeat).integers(2**62)
        torch.manual_seed(int(initial))  # top and random of one seed and repeat: the same initialisation
        model = build_model(name=run.model, width=run.width, mean=mean, std=std).to(device)
        start = time.perf_counter()
        result = train(
            model=model,
            data=data,
            run=run,
            checkpoint=context.folder / "checkpoint.pt",
            progress=context.options.progress,
        )
        last = result.metrics[-1]
        row = {
            "removed": self.removed,
            "k": self.k,
            "repeat": self.repeat,
            "n_train": len(kept),
            "removed_mislabelled": int(prepared.mislabelled[left_out].sum()),
            "removed_memorisation": float(np.nanmean(memorisation[left_out]))
            if self.removed == "top"
            else np.nan,
            "epochs": last["epoch"],
            "train_acc": last["train_acc"],
            "test_acc": last["test_acc"],
            "reached_target": bool(last["train_acc"] >= run.target_acc),
            "seconds": time.perf_counter() - start,
        }
        table, left = context.folder / "removal.csv", context.folder / "removed.npz"
        write_csv(with_keys(run.keys(), pd.DataFrame([row])), table)
        write_npz(left, index=prepared.train_index[left_out])
        return {**self.settings(), **row, **file_record([table, left])}

    def tidy(self, folder: Path) -> None:
        (folder / "checkpoint.pt").unlink(missing_ok=True)
