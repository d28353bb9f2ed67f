"""A study: every (rate, seed) of a StudyConfig trained and probed, each run cached in its own folder,
then gathered into the tidy tables of the output folder (see README, "Outputs")."""

import logging
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from overparam.config import ConfigError, RunConfig, StudyConfig
from overparam.data import NORMALIZATION, load_split, resolve_data_dir
from overparam.mislabel import ChoiceError, Mislabelling, class_balanced_subset, mislabel
from overparam.models import build_model, count_parameters
from overparam.probe import curves, flip_sigmas, predict_under_blur
from overparam.runtime import environment, make_deterministic, select_device
from overparam.storage import RunPaths, read_json, run_paths, save_torch, study_table, write_csv, write_json
from overparam.train import TrainingData, train

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Splits:
    """Whole train and test splits on the compute device: images [N, 28, 28] uint8, labels [N] int64."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


def load_splits(config: StudyConfig, device: torch.device) -> Splits:
    data_dir = resolve_data_dir(config.data_dir)
    tensors = []
    for split in ("train", "test"):
        images, labels = load_split(
            dataset=config.dataset, split=split, data_dir=data_dir, download=config.download
        )
        tensors += [images.to(device), labels.to(device)]
    return Splits(*tensors)


@dataclass(frozen=True)
class PreparedRun:
    """A run's choice of images: positions in the original splits, and its mislabelling."""

    run: RunConfig
    paths: RunPaths
    train_index: np.ndarray  # [n_train] int64
    test_index: np.ndarray  # [n_test] int64
    true_labels: np.ndarray  # [n_train] int64
    mislabelling: Mislabelling  # positions index train_index

    @property
    def assigned_labels(self) -> np.ndarray:
        return self.mislabelling.apply(self.true_labels)

    @property
    def mislabelled(self) -> np.ndarray:
        mask = np.zeros(len(self.train_index), dtype=bool)
        mask[self.mislabelling.positions] = True
        return mask


def prepare(run: RunConfig, splits: Splits, out: Path) -> PreparedRun:
    """Choose the run's images and mislabels; data-dependent setting errors surface here, before training."""
    train_labels, test_labels = splits.train_labels.cpu().numpy(), splits.test_labels.cpu().numpy()
    key = {"dataset": run.dataset, "seed": run.seed}
    try:
        train_index = class_balanced_subset(labels=train_labels, size=run.train_size, split="train", **key)
        test_index = class_balanced_subset(labels=test_labels, size=run.test_size, split="test", **key)
        mislabelling = mislabel(labels=train_labels[train_index], rate=run.rate, **key)
    except ChoiceError as error:
        raise ConfigError(str(error)) from None
    return PreparedRun(
        run=run,
        paths=run_paths(out, run_id=run.run_id(), probe_id=run.probe_id()),
        train_index=train_index,
        test_index=test_index,
        true_labels=train_labels[train_index],
        mislabelling=mislabelling,
    )


def _new_model(run: RunConfig) -> torch.nn.Module:
    mean, std = NORMALIZATION[run.dataset]
    torch.manual_seed(run.seed)
    return build_model(name=run.model, width=run.width, mean=mean, std=std)


def train_run(prepared: PreparedRun, splits: Splits, *, progress: bool = True) -> dict[str, Any]:
    """Train one run unless its folder already holds the result; returns its training record."""
    run, paths = prepared.run, prepared.paths
    if paths.training.exists():
        log.info("cached  %s (trained)", run.run_id())
        return read_json(paths.training)
    device = splits.train_images.device
    train_index = torch.as_tensor(prepared.train_index, device=device)
    test_index = torch.as_tensor(prepared.test_index, device=device)
    data = TrainingData(
        images=splits.train_images[train_index],
        assigned_labels=torch.as_tensor(prepared.assigned_labels, device=device),
        mislabelled=torch.as_tensor(prepared.mislabelled, device=device),
        test_images=splits.test_images[test_index],
        test_labels=splits.test_labels[test_index],
    )
    model = _new_model(run).to(device)
    keys = run.keys()
    mislabels = _with_keys(
        keys,
        pd.DataFrame(
            {
                "index": prepared.train_index[prepared.mislabelling.positions],
                "true_label": prepared.mislabelling.true_labels,
                "assigned_label": prepared.mislabelling.assigned_labels,
            }
        ),
    )
    write_csv(mislabels, paths.mislabels)
    rows = train(model=model, data=data, run=run, checkpoint=paths.checkpoint, progress=progress)
    last = rows[-1]
    write_csv(_with_keys(keys, pd.DataFrame(rows)), paths.metrics)
    save_torch(model.state_dict(), paths.model)
    record = {
        "run_id": run.run_id(),
        "run": asdict(run),
        "result": {
            **keys,
            "n_train": len(prepared.train_index),
            "n_test": len(prepared.test_index),
            "n_mislabelled": len(prepared.mislabelling.positions),
            "n_parameters": count_parameters(model),
            "epochs": last["epoch"],
            "reached_target": bool(last["train_acc"] >= run.target_acc),
            "train_acc": last["train_acc"],
            "mislabelled_train_acc": last["mislabelled_train_acc"],
            "test_acc": last["test_acc"],
            "train_seconds": sum(row["seconds"] for row in rows),
            "run_id": run.run_id(),
        },
        "environment": environment(device),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    write_json(record, paths.training)
    paths.checkpoint.unlink(missing_ok=True)
    result = record["result"]
    flag = "reached" if result["reached_target"] else "MISSED"
    log.info(
        "trained %s: %s target %.4g after %d epochs (train acc %.4f, test acc %.4f, %.0f s)",
        run.run_id(),
        flag,
        run.target_acc,
        result["epochs"],
        result["train_acc"],
        result["test_acc"],
        result["train_seconds"],
    )
    return record


def probe_run(prepared: PreparedRun, splits: Splits, *, progress: bool = True) -> None:
    """Probe one trained run at every sigma unless its probe folder already holds the result."""
    run, paths = prepared.run, prepared.paths
    if paths.probe_record.exists():
        log.info("cached  %s (probed)", run.run_id())
        return
    if not paths.model.exists():
        raise ConfigError(
            f"no trained model in {paths.root}; run `overparam train` with the same settings first"
        )
    device = splits.train_images.device
    model = _new_model(run).to(device)
    model.load_state_dict(torch.load(paths.model, map_location=device, weights_only=True))
    start = time.perf_counter()
    train_images = splits.train_images[torch.as_tensor(prepared.train_index, device=device)]
    test_images = splits.test_images[torch.as_tensor(prepared.test_index, device=device)]
    label = f"rate={run.rate:.4g} seed={run.seed}"
    train_predictions = predict_under_blur(
        model, train_images, run.sigmas, progress=progress, desc=f"probe train {label}"
    )
    test_predictions = predict_under_blur(
        model, test_images, run.sigmas, progress=progress, desc=f"probe test {label}"
    )
    seconds = time.perf_counter() - start

    test_labels = splits.test_labels.cpu().numpy()[prepared.test_index]
    mislabelled = prepared.mislabelled
    n_train, n_test = len(mislabelled), len(test_labels)
    in_train = np.r_[np.ones(n_train, bool), np.zeros(n_test, bool)]
    is_mislabelled = np.r_[mislabelled, np.zeros(n_test, bool)]
    true_labels = np.r_[prepared.true_labels, test_labels]
    assigned_labels = np.r_[prepared.assigned_labels, test_labels]
    predictions = np.concatenate([train_predictions, test_predictions], axis=1)
    keys = run.keys()
    curve_table = curves(
        predictions=predictions,
        sigmas=run.sigmas,
        true_labels=true_labels,
        assigned_labels=assigned_labels,
        groups={"mislabelled": is_mislabelled, "clean": in_train & ~is_mislabelled, "test": ~in_train},
    )
    flips = _with_keys(
        keys,
        pd.DataFrame(
            {
                "split": np.where(in_train, "train", "test"),
                "index": np.r_[prepared.train_index, prepared.test_index],
                "true_label": true_labels,
                "assigned_label": assigned_labels,
                "mislabelled": is_mislabelled,
                "prediction_at_0": predictions[0],
                "flip_sigma": flip_sigmas(predictions, run.sigmas),
            }
        ),
    )
    paths.probe.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        paths.predictions,
        sigmas=np.asarray(run.sigmas),
        train=train_predictions.astype(np.uint8),
        test=test_predictions.astype(np.uint8),
        train_index=prepared.train_index,
        test_index=prepared.test_index,
    )
    write_csv(_with_keys(keys, curve_table), paths.curves)
    write_csv(flips, paths.flips)
    write_json(
        {
            "run_id": run.run_id(),
            "sigmas": list(run.sigmas),
            "seconds": seconds,
            "images": n_train + n_test,
            "environment": environment(device),
        },
        paths.probe_record,
    )
    log.info(
        "probed  %s: %d images x %d sigmas in %.0f s",
        run.run_id(),
        n_train + n_test,
        len(run.sigmas),
        seconds,
    )


def gather_tables(out: Path, prepared_runs: list[PreparedRun]) -> None:
    """Write OUT/runs.csv, metrics.csv, mislabels.csv, curves.csv and flips.csv from the finished runs."""
    trained = [p.paths for p in prepared_runs if p.paths.training.exists()]
    probed = [paths for paths in trained if paths.probe_record.exists()]
    if trained:
        write_csv(
            pd.DataFrame([read_json(paths.training)["result"] for paths in trained]), study_table(out, "runs")
        )
    sources = {
        "metrics": [paths.metrics for paths in trained],
        "mislabels": [paths.mislabels for paths in trained],
        "curves": [paths.curves for paths in probed],
        "flips": [paths.flips for paths in probed],
    }
    for name, files in sources.items():
        if files:
            write_csv(pd.concat([pd.read_csv(f) for f in files], ignore_index=True), study_table(out, name))


def _with_keys(keys: dict[str, Any], frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with the run's key columns first."""
    return frame.assign(**keys)[[*keys, *frame.columns]]


def default_out(config: StudyConfig, preset: str) -> Path:
    return Path("runs") / f"{preset}-{config.dataset}-{config.study_id()}"


def _check_same_study(out: Path, config: StudyConfig) -> None:
    existing = out / "config.json"
    if not existing.exists():
        return
    previous = read_json(existing).get("study_id")
    if previous != config.study_id():
        raise ConfigError(
            f"{out} already holds a different study (study_id {previous}, this one {config.study_id()}); "
            "choose another --out so its results stay intact"
        )


@dataclass(frozen=True)
class OpenStudy:
    """A study ready to run: its folder, its data on the device and its prepared runs."""

    out: Path
    splits: Splits
    runs: list[PreparedRun]


def open_study(config: StudyConfig, *, preset: str) -> OpenStudy:
    """Check every setting against the data and record the study in OUT/config.json, before any training."""
    out = Path(config.out) if config.out else default_out(config, preset)
    device = select_device(config.device)
    make_deterministic()
    _check_same_study(out, config)
    splits = load_splits(config, device)
    prepared_runs = [prepare(run, splits, out) for run in config.runs()]
    write_json(
        {
            "preset": preset,
            "study_id": config.study_id(),
            "config": {**asdict(config), "out": str(out)},
            "runs": [p.run.run_id() for p in prepared_runs],
            "command": sys.argv,
            "environment": environment(device),
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
        },
        out / "config.json",
    )
    log.info("study %s: %d runs on %s -> %s", config.study_id(), len(prepared_runs), device, out)
    return OpenStudy(out=out, splits=splits, runs=prepared_runs)


def reproduce(config: StudyConfig, *, preset: str, progress: bool = True) -> Path:
    """Train and probe every (rate, seed) of `config`, reusing finished runs; returns the output folder."""
    study = open_study(config, preset=preset)
    for prepared in study.runs:
        train_run(prepared, study.splits, progress=progress)
        probe_run(prepared, study.splits, progress=progress)
        gather_tables(study.out, study.runs)
    return study.out
