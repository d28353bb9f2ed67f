"""The sweep's own step, beside the core's training and probe: a trained run's test loss (the training
record keeps only test accuracy), and the tidy table of every run gathered back from the store."""

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from overparam.config import RunConfig
from overparam.execution import ProbeStep, TrainStep
from overparam.runs import prepared_run, trained_model, training_data
from overparam.store.files import file_record, read_json, read_verified, with_keys, write_csv
from overparam.store.steps import Step, StepContext

BATCH = 1000  # test images per forward pass


@torch.inference_mode()
def mean_cross_entropy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Eval-mode mean cross-entropy (nats per image) of uint8 images [N, H, W] against labels [N]."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=images.device)
    for start in range(0, len(images), BATCH):
        batch = images[start : start + BATCH, None].float().div_(255)
        total += F.cross_entropy(model(batch), labels[start : start + BATCH], reduction="sum").double()
    model.train(was_training)
    return float(total) / len(images)


@dataclass(frozen=True)
class TestLossStep(Step):
    """The trained run's mean cross-entropy on its test images: `<run_id>/test-loss`, table test_loss.csv."""

    run: RunConfig
    kind: ClassVar[str] = "width-test-loss"

    def step_id(self) -> str:
        return f"{self.run.run_id()}/test-loss"

    def needs(self) -> tuple[Step, ...]:
        return (TrainStep(self.run),)

    def compute(self, context: StepContext) -> dict[str, Any]:
        prepared, splits = prepared_run(self.run, context)
        data = training_data(prepared, splits)
        model = trained_model(self.run, prepared.paths, context.device)
        loss = mean_cross_entropy(model, data.test_images, data.test_labels)
        path = context.folder / "test_loss.csv"
        write_csv(with_keys(self.run.keys(), pd.DataFrame([{"test_loss": loss}])), path)
        return file_record([path])


def sweep_steps(run: RunConfig, *, probe: bool) -> list[Step]:
    """The steps of one run of the sweep: training, test loss, and the blur probe when asked."""
    return [TrainStep(run), TestLossStep(run), *([ProbeStep(run, "blur")] if probe else [])]


def blur_gap(flips: pd.DataFrame, levels: np.ndarray) -> float:
    """The blur probe's gap-adjusted difference of one run: among training images fit at sigma 0 (prediction
    equals the assigned label, so the starting gap is removed), the mean over the sigmas above 0 of the
    fraction flipped by each sigma, mislabelled minus clean. NaN without fit images of both groups.

    flips: one row per probed image (flips.csv: split, mislabelled, assigned_label, prediction_at_0,
    flip_level, NaN when it never flips); levels: the probe's sigmas [L], ascending from 0."""
    fit = flips[(flips["split"] == "train") & (flips["prediction_at_0"] == flips["assigned_label"])]
    later = np.asarray(levels, dtype=float)[1:]
    areas = {}
    for name, group in fit.groupby("mislabelled"):
        flip = group["flip_level"].to_numpy(dtype=float)[:, None]
        areas[bool(name)] = float((np.nan_to_num(flip, nan=np.inf) <= later[None]).mean())
    return areas[True] - areas[False] if len(areas) == 2 else np.nan


def blur_auroc(flips: pd.DataFrame, levels: np.ndarray) -> float:
    """How well the blur flip level tells the mislabelled training images from the clean ones: the AUROC of
    "flips at a smaller sigma" over every training image (never flipped: least suspicious; 0.5 = no signal,
    1 = every mislabelled image flips before every clean one). NaN without images of both groups.

    flips: as `blur_gap`'s; levels: the probe's sigmas [L]."""
    from sklearn.metrics import roc_auc_score

    train = flips[flips["split"] == "train"]
    if train["mislabelled"].nunique() < 2:
        return np.nan
    never = float(np.max(levels)) + 1.0
    suspicion = -np.nan_to_num(train["flip_level"].to_numpy(dtype=float), nan=never)
    return float(roc_auc_score(train["mislabelled"].astype(bool), suspicion))


def gather_runs(runs: list[RunConfig], store: Path, *, probe: bool) -> pd.DataFrame:
    """One row per finished run (`width_runs.csv`): its keys, parameters (and per training image), fit of
    all assigned labels (`train_acc`), of the clean and of the mislabelled images, test accuracy, error and
    loss, the first epoch reaching the target (NaN if none), and with `probe` the blur gap (`blur_gap`) and
    the flip level's AUROC at finding the mislabelled images (`blur_auroc`)."""
    rows = []
    for run in runs:
        train = TrainStep(run)
        if not train.record(store).exists():
            continue
        result = read_json(train.record(store))["result"]
        n, n_mislabelled = result["n_train"], result["n_mislabelled"]
        mislabelled_fit = result["mislabelled_train_acc"] if n_mislabelled else np.nan
        clean_right = result["train_acc"] * n - (mislabelled_fit * n_mislabelled if n_mislabelled else 0.0)
        row = run.keys() | {
            "parameters": result["n_parameters"],
            "parameters_per_image": result["n_parameters"] / n,
            "n_mislabelled": n_mislabelled,
            "epochs": result["epochs"],
            "train_acc": result["train_acc"],
            "clean_fit": clean_right / (n - n_mislabelled),
            "mislabelled_fit": mislabelled_fit,
            "test_acc": result["test_acc"],
            "test_error": 1 - result["test_acc"],
            "first_target_epoch": result["first_target_epoch"],
        }
        loss = TestLossStep(run)
        if loss.record(store).exists():
            table = pd.read_csv(io.BytesIO(read_verified(loss.record(store), "test_loss.csv")))
            row["test_loss"] = float(table["test_loss"].iloc[0])
        probed = ProbeStep(run, "blur")
        if probe and probed.record(store).exists():
            flips = pd.read_csv(io.BytesIO(read_verified(probed.record(store), "flips.csv")))
            levels = np.asarray(read_json(probed.record(store))["levels"])
            row["blur_gap"], row["blur_auroc"] = blur_gap(flips, levels), blur_auroc(flips, levels)
        rows.append(row)
    return pd.DataFrame(rows)
