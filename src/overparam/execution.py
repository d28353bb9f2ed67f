"""One run, the unit of work: choose its images, train, probe, all inside its own folder of the run store.

`execute` is what every executor calls (in-process, in a process pool, as a Ray task or a SLURM job): it
takes the run's lock, skips what is finished, resumes what was interrupted and records a failure instead of
raising, so one bad run never stops the others.
"""

import functools
import io
import logging
import logging.handlers
import os
import shutil
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from multiprocessing import connection, get_context
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from overparam.config import IDENTITY_SCHEMA, ConfigError, RunConfig
from overparam.data import NORMALIZATION, load_split, resolve_data_dir
from overparam.mislabel import ChoiceError, Mislabelling, class_balanced_subset, keyed_generator, mislabel
from overparam.models import build_model, compiled, count_parameters, predict, predict_with_probabilities
from overparam.perturb import ProbeInputs
from overparam.perturb import get as get_perturbation
from overparam.probe import curves, flip_levels, identity_sigmas
from overparam.runtime import environment, make_deterministic, select_device
from overparam.stats import wilson_interval
from overparam.storage import (
    CorruptFileError,
    RunPaths,
    exclusive_lock,
    file_record,
    load_checked,
    read_json,
    read_verified,
    record_intact,
    remove_stale_temporaries,
    run_paths,
    save_checked,
    with_keys,
    write_csv,
    write_json,
    write_npz,
)
from overparam.train import TrainingData, train

log = logging.getLogger(__name__)
LEVEL_CHUNK = 8  # levels probed between two saves: an interrupted probe loses at most one chunk
FP32_CHECK_IMAGES = 1000  # per split, predicted again in eager fp32 to check a bf16 or compiled probe


@dataclass(frozen=True)
class Splits:
    """Whole train and test splits on the compute device: images [N, 28, 28] uint8, labels [N] int64."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


@functools.lru_cache(maxsize=2)
def load_splits(*, dataset: str, data_dir: str | None, download: bool, device: str) -> Splits:
    """Both splits of `dataset` on `device`, loaded once per process."""
    folder = resolve_data_dir(data_dir)
    tensors = []
    for split in ("train", "test"):
        images, labels = load_split(dataset=dataset, split=split, data_dir=folder, download=download)
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

    def probed(self) -> np.ndarray:
        """Sorted positions (into train_index) of the training images the probe sees: all of them, or with
        `clean_sample` every mislabelled image and a fixed random sample of that many clean ones."""
        run, everything = self.run, np.arange(len(self.train_index))
        clean = everything[~self.mislabelled]
        if run.clean_sample == 0 or run.clean_sample >= len(clean):
            return everything
        rng = keyed_generator(
            "clean-sample", run.dataset, run.train_size, run.rate, run.seed, run.clean_sample
        )
        return np.sort(
            np.r_[self.mislabelling.positions, rng.choice(clean, size=run.clean_sample, replace=False)]
        )


def prepare(run: RunConfig, splits: Splits, store: Path) -> PreparedRun:
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
        paths=run_paths(store, run_id=run.run_id(), probe_id=run.probe_id()),
        train_index=train_index,
        test_index=test_index,
        true_labels=train_labels[train_index],
        mislabelling=mislabelling,
    )


def new_model(run: RunConfig) -> torch.nn.Module:
    """The run's untrained model: its architecture behind its data set's normalisation, seeded by the run."""
    mean, std = NORMALIZATION[run.dataset]
    torch.manual_seed(run.seed)
    return build_model(name=run.model, width=run.width, mean=mean, std=std)


def trained_model(run: RunConfig, paths: RunPaths, device: torch.device) -> torch.nn.Module:
    """The run's model with the weights training saved, on `device` (uncompiled)."""
    model = new_model(run).to(device)
    model.load_state_dict(load_checked(paths.model, map_location=device))
    return model


def train_run(prepared: PreparedRun, splits: Splits, *, progress: bool = True) -> dict[str, Any]:
    """Train one run unless its folder already holds the result; returns its training record. Called by
    `run_steps`, which has discarded any record whose files no longer match it."""
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
    model = new_model(run).to(device)
    keys = run.keys()
    mislabels = with_keys(
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
    result = train(model=model, data=data, run=run, checkpoint=paths.checkpoint, progress=progress)
    rows, last = result.metrics, result.metrics[-1]
    write_csv(with_keys(keys, pd.DataFrame(rows)), paths.metrics)
    save_checked(model.state_dict(), paths.model)
    write_npz(
        paths.final_predictions,
        train=result.final.train_predictions.cpu().numpy().astype(np.uint8),
        test=result.final.test_predictions.cpu().numpy().astype(np.uint8),
    )
    record = {
        "run_id": run.run_id(),
        "identity_schema": IDENTITY_SCHEMA,
        "run": asdict(run),
        "result": {
            **keys,
            "n_train": len(prepared.train_index),
            "n_test": len(prepared.test_index),
            "n_mislabelled": len(prepared.mislabelling.positions),
            "n_parameters": count_parameters(model),
            "schedule": run.schedule,
            "epochs": last["epoch"],
            "first_target_epoch": next((r["epoch"] for r in rows if r["train_acc"] >= run.target_acc), None),
            "final_lr": last["lr"],
            "reached_target": bool(last["train_acc"] >= run.target_acc),
            "adversarial": run.adversarial,
            "adversarial_epsilon": run.adversarial_epsilon if run.adversarial != "none" else 0.0,
            "train_acc": last["train_acc"],
            "mislabelled_train_acc": last["mislabelled_train_acc"],
            "test_acc": last["test_acc"],
            "train_seconds": sum(row["seconds"] for row in rows),
            "run_id": run.run_id(),
        },
        "environment": environment(device),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        **file_record([paths.metrics, paths.mislabels, paths.model, paths.final_predictions]),
    }
    write_json(record, paths.training)
    paths.checkpoint.unlink(missing_ok=True)
    summary = record["result"]
    flag = "reached" if summary["reached_target"] else "MISSED"
    log.info(
        "trained %s: %s target %.4g after %d epochs, %s schedule (train acc %.4f, test acc %.4f, %.0f s)",
        run.run_id(),
        flag,
        run.target_acc,
        summary["epochs"],
        run.schedule,
        summary["train_acc"],
        summary["test_acc"],
        summary["train_seconds"],
    )
    return record


def probe_run(
    prepared: PreparedRun, splits: Splits, *, perturbation: str = "blur", progress: bool = True
) -> None:
    """Probe one trained run under one perturbation at every level of its grid unless that probe's folder
    already holds the result. Called by `run_steps`, which has discarded any record whose files no longer
    match it."""
    run = prepared.run
    paths = prepared.paths.with_probe(run.probe_id(perturbation))
    if paths.probe_record.exists():
        log.info("cached  %s (probed, %s)", run.run_id(), perturbation)
        return
    if not paths.training.exists():
        raise ConfigError(
            f"no trained model in {paths.root}; run `overparam train` with the same settings first"
        )
    kind, levels = get_perturbation(perturbation), run.levels_of(perturbation)
    device = splits.train_images.device
    model = trained_model(run, paths, device)
    forward = compiled(model, enabled=run.compile)
    start = time.perf_counter()
    probed = prepared.probed()
    train_index = prepared.train_index[probed]
    images = {
        "train": splits.train_images[torch.as_tensor(train_index, device=device)],
        "test": splits.test_images[torch.as_tensor(prepared.test_index, device=device)],
    }
    indices = {"train": train_index, "test": prepared.test_index}
    unperturbed, probabilities = unperturbed_predictions(forward, images, run.precision)
    disagreements = sigma0_disagreements(paths, unperturbed, probed)
    inputs = {
        split: ProbeInputs(
            model=forward,
            reference=torch.as_tensor(unperturbed[split], device=device),
            indices=torch.as_tensor(indices[split], device=device),
            split=split,
            seed=run.seed,
            precision=run.precision,
        )
        for split in images
    }
    parts = [{split: unperturbed[split][None] for split in images}]  # level 0
    perturbed_levels = levels[1:]
    # An attack's search for each image's smallest flipping level spans the whole grid: one part.
    chunk = len(perturbed_levels) if kind.needs_gradients else LEVEL_CHUNK
    for number, first in enumerate(range(0, len(perturbed_levels), chunk)):
        chunk_levels = perturbed_levels[first : first + chunk]
        part = _finished_part(paths.probe_part(number), chunk_levels)
        if part is None:
            label = f"{perturbation} rate={run.rate:.4g} seed={run.seed} "
            label += f"levels {chunk_levels[0]:g}-{chunk_levels[-1]:g}"
            part = {
                split: kind.predict(
                    images[split],
                    chunk_levels,
                    inputs[split],
                    progress=progress,
                    desc=f"probe {split} {label}",
                )
                for split in images
            }
            tensors = {name: torch.from_numpy(value) for name, value in part.items()}
            save_checked(
                {"levels": [float(level) for level in chunk_levels], **tensors}, paths.probe_part(number)
            )
        parts.append(part)
    predicted = {split: np.concatenate([part[split] for part in parts]) for split in images}
    seconds = time.perf_counter() - start
    fp32_check = (
        None
        if run.precision == "fp32" and not run.compile
        else check_against_fp32(
            model, run, perturbation=perturbation, images=images, indices=indices, predictions=predicted
        )
    )

    test_labels = splits.test_labels.cpu().numpy()[prepared.test_index]
    mislabelled = prepared.mislabelled[probed]
    n_train, n_test = len(mislabelled), len(test_labels)
    in_train = np.r_[np.ones(n_train, bool), np.zeros(n_test, bool)]
    is_mislabelled = np.r_[mislabelled, np.zeros(n_test, bool)]
    true_labels = np.r_[prepared.true_labels[probed], test_labels]
    assigned_labels = np.r_[prepared.assigned_labels[probed], test_labels]
    predictions = np.concatenate([predicted["train"], predicted["test"]], axis=1)
    identity = (
        identity_sigmas(levels, [images["train"], images["test"]], normalize=model[0])
        if perturbation == "blur"
        else ()
    )
    identity_changed = int((predictions[[levels.index(level) for level in identity]] != predictions[0]).sum())
    keys = run.keys()
    probe_columns = {"perturbation": perturbation, "probe_id": paths.probe_id}
    curve_table = curves(
        predictions=predictions,
        levels=levels,
        true_labels=true_labels,
        assigned_labels=assigned_labels,
        groups={"mislabelled": is_mislabelled, "clean": in_train & ~is_mislabelled, "test": ~in_train},
    )
    n_clean = int((~prepared.mislabelled).sum())  # the clean images of the run, probed or not
    population = {"mislabelled": int(mislabelled.sum()), "clean": n_clean, "test": n_test}
    curve_table.insert(3, "population", curve_table["group"].map(population))
    flips = with_keys(
        keys | probe_columns,
        pd.DataFrame(
            {
                "split": np.where(in_train, "train", "test"),
                "index": np.r_[train_index, prepared.test_index],
                "true_label": true_labels,
                "assigned_label": assigned_labels,
                "mislabelled": is_mislabelled,
                "prediction_at_0": predictions[0],
                "flip_level": flip_levels(predictions, levels),
            }
        ),
    )
    write_npz(
        paths.predictions,
        levels=np.asarray(levels),
        train=predicted["train"].astype(np.uint8),
        test=predicted["test"].astype(np.uint8),
        train_index=train_index,
        test_index=prepared.test_index,
        probability_levels=np.zeros(1),
        train_probabilities=probabilities["train"][None],
        test_probabilities=probabilities["test"][None],
    )
    write_csv(with_keys(keys | probe_columns, curve_table), paths.curves)
    write_csv(flips, paths.flips)
    write_json(
        {
            "run_id": run.run_id(),
            "perturbation": perturbation,
            "levels": list(levels),
            "settings": kind.settings(),
            "seconds": seconds,
            "images": n_train + n_test,
            "clean_sample": run.clean_sample,
            "clean_images": n_clean,
            "precision": run.precision,
            "compile": run.compile,
            "fp32_check": fp32_check,
            "sigma0_disagreements": disagreements,
            "identity_sigmas": list(identity),
            "identity_sigmas_changed": identity_changed,
            "model_sha256": read_json(paths.training)["files"][paths.model.name],
            "environment": environment(device),
            **file_record([paths.predictions, paths.curves, paths.flips]),
        },
        paths.probe_record,
    )
    shutil.rmtree(paths.probe_parts, ignore_errors=True)
    if disagreements is not None and any(disagreements.values()):
        log.warning(
            "        %s: the probe's level-0 predictions differ from training's last evaluation for %d "
            "training and %d test images (probe.json, sigma0_disagreements)",
            run.run_id(),
            disagreements["train"],
            disagreements["test"],
        )
    if identity_changed:
        log.warning(
            "        %s: %d predictions changed at sigmas %s, whose blur leaves every image as the network "
            "sees it (probe.json, identity_sigmas_changed)",
            run.run_id(),
            identity_changed,
            ", ".join(f"{sigma:g}" for sigma in identity),
        )
    if fp32_check is not None:
        log.info(
            "        %s: %s%s predictions of a sample agree with eager fp32 in %.4f (95 %% CI %.4f-%.4f)",
            run.run_id(),
            run.precision,
            " compiled" if run.compile else "",
            fp32_check["agreement"],
            fp32_check["low"],
            fp32_check["high"],
        )
    sampled = f" (clean images: a sample of {n_train - len(prepared.mislabelling.positions)} of {n_clean})"
    log.info(
        "probed  %s: %s, %d images x %d levels in %.0f s%s",
        run.run_id(),
        perturbation,
        n_train + n_test,
        len(levels),
        seconds,
        sampled if len(probed) < len(prepared.train_index) else "",
    )


def check_against_fp32(
    model: torch.nn.Module,
    run: RunConfig,
    *,
    perturbation: str,
    images: dict[str, torch.Tensor],
    indices: dict[str, np.ndarray],
    predictions: dict[str, np.ndarray],
) -> dict[str, Any]:
    """How often eager fp32 repeats a bf16 or compiled probe: a fixed random sample of up to
    FP32_CHECK_IMAGES uint8 images [N, H, W] per split, predicted by the uncompiled `model` in fp32 at every
    level of `perturbation` (random perturbations keyed by the images' original `indices`, as in the probe)
    and compared with `predictions` [L, N] of the same split. Returns images,
    predictions compared, agreement and its 95 % Wilson bounds."""
    matches, sampled = [], 0
    kind, levels = get_perturbation(perturbation), run.levels_of(perturbation)
    for split, pixels in images.items():
        rng = keyed_generator("fp32-check", run.dataset, run.train_size, run.rate, run.seed, split)
        sample = np.sort(rng.choice(len(pixels), size=min(FP32_CHECK_IMAGES, len(pixels)), replace=False))
        chosen = pixels[torch.as_tensor(sample, device=pixels.device)]
        reference = predict(model, chosen)
        inputs = ProbeInputs(
            model=model,
            reference=reference,
            indices=torch.as_tensor(indices[split][sample], device=pixels.device),  # keys as in the probe
            split=split,
            seed=run.seed,
        )
        found = np.concatenate([reference.cpu().numpy()[None], kind.predict(chosen, levels[1:], inputs)])
        matches.append((found == predictions[split][:, sample]).ravel())
        sampled += len(sample)
    agree = np.concatenate(matches)
    fraction, low, high = wilson_interval(successes=agree.sum(), trials=agree.size)
    return {
        "images": sampled,
        "predictions": agree.size,
        "agreement": float(fraction),
        "low": float(low),
        "high": float(high),
    }


def unperturbed_predictions(
    model: torch.nn.Module, images: dict[str, torch.Tensor], precision: str
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The probe's level 0: eval-mode predictions [n] int64 and softmax probabilities [n, classes] float16
    of each split's unperturbed uint8 images [n, H, W], by the pass that evaluated training (`predict`)."""
    found = {
        name: predict_with_probabilities(model, split, precision=precision) for name, split in images.items()
    }
    return (
        {name: labels.cpu().numpy() for name, (labels, _) in found.items()},
        {name: probabilities.cpu().numpy() for name, (_, probabilities) in found.items()},
    )


def sigma0_disagreements(
    paths: RunPaths, unblurred: dict[str, np.ndarray], probed: np.ndarray
) -> dict[str, int] | None:
    """Per split, how many of the probed images (train: positions `probed`) have a sigma-0 prediction in
    `unblurred` other than training's last evaluation of them (final_predictions.npz): 0 on the machine
    that trained the run. None when training saved no predictions (before overparam saved them)."""
    if paths.final_predictions.name not in read_json(paths.training)["files"]:
        return None
    with np.load(io.BytesIO(read_verified(paths.training, paths.final_predictions.name))) as saved:
        last = {"train": saved["train"][probed], "test": saved["test"]}
    return {split: int((unblurred[split] != last[split]).sum()) for split in ("train", "test")}


def _finished_part(path: Path, levels: tuple[float, ...]) -> dict[str, np.ndarray] | None:
    """A saved chunk of probe predictions at `levels`, or None when missing, damaged or of other levels
    (then it is computed again)."""
    if not path.exists():
        return None
    try:
        saved = load_checked(path)
    except CorruptFileError as error:
        log.warning("%s: probing these levels again", error)
        return None
    saved_levels = saved.pop("levels", saved.pop("sigmas", None))  # parts of older probes name them sigmas
    if saved_levels != [float(level) for level in levels]:
        log.warning("%s holds other levels: probing these again", path)
        return None
    return {name: value.numpy() for name, value in saved.items()}


@dataclass(frozen=True)
class RunOptions:
    """Where and how to execute runs: nothing here changes a result."""

    store: str
    data_dir: str | None = None
    download: bool = True
    device: str = "auto"
    progress: bool = False
    threads: int | None = None  # CPU threads per run; None keeps PyTorch's default


@dataclass(frozen=True)
class Outcome:
    run_id: str
    status: str  # "done" (computed now), "cached", "busy" (another process holds it) or "failed"
    error: str | None = None


def finished(paths: RunPaths, probe_ids: Sequence[str] = ()) -> bool:
    """Trained and probed (`probe_ids`, default `paths.probe_id`): every record present, every file they
    list present at its recorded size, and each probe made from the model that training.json vouches for.
    Cheap (no file is hashed): the readers of each file check its digest (`read_verified`), and `overparam
    verify` checks every byte on demand."""
    probes = [paths.with_probe(probe_id) for probe_id in probe_ids or [paths.probe_id]]
    return record_intact(paths.training) and all(
        record_intact(probe.probe_record) and _probed_this_model(paths, probe.probe_record)
        for probe in probes
    )


def run_finished(run: RunConfig, store: Path) -> bool:
    """`finished` for every perturbation of `run`."""
    return finished(
        run_paths(store, run_id=run.run_id(), probe_id=run.probe_id()), list(run.probe_ids().values())
    )


def _probed_this_model(paths: RunPaths, probe_record: Path) -> bool:
    """Whether a probe was made from the model training.json holds now: its record names the model's digest,
    or, for a probe recorded before probes named it, was written after the training record."""
    try:
        probed = read_json(probe_record).get("model_sha256")
        if probed is None:
            return probe_record.stat().st_mtime >= paths.training.stat().st_mtime
        return probed == read_json(paths.training)["files"][paths.model.name]
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _discard_damaged(paths: RunPaths, *, verify: bool = False) -> list[str]:
    """A step whose outputs no longer match its record (missing, resized, or with `verify` any byte changed)
    is reported and done again; its damaged files are never read. Retraining drops every probe of the old
    model, and a probe of another model than the one trained now (on any sigma grid) is dropped. Returns
    what was discarded, one line each."""
    discarded = []
    if paths.training.exists() and not record_intact(paths.training, verify=verify):
        discarded.append(f"{paths.root.name}: trained files do not match their record; training again")
        paths.training.unlink()
        paths.model.unlink(missing_ok=True)
        for probe in paths.all_probes():
            shutil.rmtree(probe, ignore_errors=True)
    for probe in paths.all_probes():
        record = probe / paths.probe_record.name
        if not record.exists():
            continue
        if not record_intact(record, verify=verify):
            discarded.append(f"{paths.root.name}/{probe.name}: probe files do not match their record")
            record.unlink()
        elif not paths.training.exists() or not _probed_this_model(paths, record):
            discarded.append(f"{paths.root.name}/{probe.name} probed an earlier model of this run")
            record.unlink()
    for line in discarded:
        log.warning("%s; computed again when next asked for", line)
    return discarded


def verify_store(store: Path) -> tuple[int, list[str]]:
    """`overparam verify`: check every byte of every finished step in `store` against its record, each run
    under its lock; a damaged step is discarded so that the next study computes it again. Returns the number
    of runs checked and one line per discarded step."""
    checked, discarded = 0, []
    for root in sorted(path for path in Path(store).iterdir() if (path / "run.lock").exists()):
        paths = RunPaths(root=root, probe_id="")
        with exclusive_lock(paths.lock, wait=True, owner=_owner()):
            discarded += _discard_damaged(paths, verify=True)
        checked += 1
    return checked, discarded


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _run_steps_locked(run: RunConfig, options: RunOptions, paths: RunPaths, steps: tuple[str, ...]) -> None:
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    for stale in remove_stale_temporaries(paths.root):
        log.info("removed %s, left by a process that died while writing it", stale)
    _discard_damaged(paths)
    device = select_device(options.device)
    make_deterministic()
    splits = load_splits(
        dataset=run.dataset, data_dir=options.data_dir, download=options.download, device=str(device)
    )
    prepared = prepare(run, splits, Path(options.store))
    if "train" in steps:
        train_run(prepared, splits, progress=options.progress)
    if "probe" in steps:
        for perturbation in run.perturbations:
            probe_run(prepared, splits, perturbation=perturbation, progress=options.progress)


def run_steps(run: RunConfig, options: RunOptions, *, steps: tuple[str, ...] = ("train", "probe")) -> None:
    """Do `steps` of `run` under its lock (waiting for another process that holds it); errors propagate."""
    paths = run_paths(Path(options.store), run_id=run.run_id(), probe_id=run.probe_id())
    with exclusive_lock(paths.lock, wait=True, owner=_owner()):
        _run_steps_locked(run, options, paths, steps)


def execute(run: RunConfig, options: RunOptions, *, wait: bool = True) -> Outcome:
    """Train and probe `run` in the store unless finished: what every executor calls. With `wait`, a run
    another process holds is waited for; without, it is reported "busy". Everything, the failure record
    included, happens under the run's lock. A failure is recorded in the run's folder (failed.json) and
    returned, never raised, so one bad run cannot stop the others."""
    paths = run_paths(Path(options.store), run_id=run.run_id(), probe_id=run.probe_id())
    if run_finished(run, Path(options.store)):
        log.info("cached  %s", run.run_id())
        return Outcome(run.run_id(), "cached")
    with exclusive_lock(paths.lock, wait=wait, owner=_owner()) as held:
        if not held:
            return Outcome(run.run_id(), "busy")
        if run_finished(run, Path(options.store)):  # the process we waited for finished it
            log.info("cached  %s", run.run_id())
            return Outcome(run.run_id(), "cached")
        try:
            _run_steps_locked(run, options, paths, ("train", "probe"))
        except Exception as error:
            message = f"{type(error).__name__}: {error}"
            log.error("failed  %s: %s", run.run_id(), message)
            _record_failure(paths, message, traceback.format_exc())
            return Outcome(run.run_id(), "failed", message)
        paths.failure.unlink(missing_ok=True)
        return Outcome(run.run_id(), "done")


def _record_failure(paths: RunPaths, message: str, details: str) -> None:
    try:
        record = {"error": message, "traceback": details, "host": socket.gethostname()}
        write_json({**record, "time": datetime.now(UTC).isoformat(timespec="seconds")}, paths.failure)
    except Exception:  # the store itself may be what failed: the log still says so
        log.exception("could not record the failure of %s", paths.root.name)


def execute_logged(run: RunConfig, options: RunOptions) -> Outcome:
    """`execute` in a worker of Ray or SLURM, whose log lines (epochs, resumes, outcomes) go to its stderr
    with the run id in front: Ray forwards them to the driver, submitit keeps them in the job's log."""
    logging.basicConfig(
        level=logging.INFO, format=f"[{run.run_id()}] %(message)s", stream=sys.stderr, force=True
    )
    return execute(run, options)


def local_threads(jobs: int) -> int:
    """CPU threads per run when `jobs` runs share this machine: PyTorch's default split evenly. A run's
    rounding depends on its thread count, which its records keep."""
    return max(1, torch.get_num_threads() // jobs)


def execute_local(
    runs: Sequence[RunConfig],
    options: RunOptions,
    *,
    jobs: int = 1,
    on_outcome: Callable[[Outcome], object] = lambda outcome: None,
) -> list[Outcome]:
    """Execute `runs` on this machine, `jobs` at a time: one job runs them in this process, more run each in
    a fresh process of its own with a share of the CPU threads (on a GPU, they share it). A worker that dies
    (out of memory, a signal) fails its own run only. `on_outcome` is called with each outcome as it comes."""
    options = replace(options, threads=local_threads(jobs))
    if jobs == 1:
        outcomes = []
        for run in runs:
            outcomes.append(execute(run, options))
            on_outcome(outcomes[-1])
        return outcomes
    return _execute_in_processes(runs, replace(options, progress=False), jobs=jobs, on_outcome=on_outcome)


class _Relay(logging.Handler):
    """Hands a worker's log record to this process's logger of the same name, as if logged here."""

    def emit(self, record: logging.LogRecord) -> None:
        logging.getLogger(record.name).handle(record)


def _worker(run: RunConfig, options: RunOptions, results: connection.Connection, logs: Any) -> None:
    """A local worker process: `execute` one run, its log records sent to the parent with the run id."""
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(logs)]
    root.setLevel(logging.INFO)
    prefix = f"[{run.run_id()}] "

    def with_run_id(record: logging.LogRecord) -> bool:
        record.msg, record.args = prefix + record.getMessage(), None
        return True

    root.handlers[0].addFilter(with_run_id)
    results.send(execute(run, options))
    results.close()


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        cause = " (out of memory, or killed by hand)" if -exitcode == signal.SIGKILL else ""
        return f"WorkerDied: its process was killed by {name}{cause}"
    return f"WorkerDied: its process exited with code {exitcode} before reporting"


def _execute_in_processes(
    runs: Sequence[RunConfig], options: RunOptions, *, jobs: int, on_outcome: Callable[[Outcome], object]
) -> list[Outcome]:
    context = get_context("spawn")  # a forked child would inherit the parent's PyTorch threads and locks
    logs = context.Queue()
    listener = logging.handlers.QueueListener(logs, _Relay())
    waiting, active, outcomes = list(runs), {}, []
    bar = tqdm(total=len(runs), unit="run", desc=f"runs, {jobs} at a time", disable=not sys.stderr.isatty())
    listener.start()
    try:
        while waiting or active:
            while waiting and len(active) < jobs:
                run = waiting.pop(0)
                reader, writer = context.Pipe(duplex=False)
                process = context.Process(target=_worker, args=(run, options, writer, logs), daemon=True)
                process.start()
                writer.close()
                active[process.sentinel] = (process, run, reader)
            for sentinel in connection.wait(list(active)):
                process, run, reader = active.pop(sentinel)
                process.join()
                try:  # a dead worker's pipe polls ready too, at its end
                    outcome = reader.recv() if reader.poll() else None
                except EOFError:
                    outcome = None
                if outcome is None:
                    outcome = Outcome(run.run_id(), "failed", _death(process.exitcode))
                    log.error("failed  %s: %s", run.run_id(), outcome.error)
                    _record_death(run, options, outcome.error)
                reader.close()
                outcomes.append(outcome)
                bar.update()
                log.info("%-7s %s (%d of %d runs)", outcome.status, outcome.run_id, len(outcomes), len(runs))
                on_outcome(outcome)
    finally:
        for process, _, _ in active.values():
            process.kill()
            process.join()
        listener.stop()
        bar.close()
    return outcomes


def _record_death(run: RunConfig, options: RunOptions, message: str) -> None:
    """failed.json for a run whose worker died, under the run's lock (the kernel released the dead one's)."""
    paths = run_paths(Path(options.store), run_id=run.run_id(), probe_id=run.probe_id())
    with exclusive_lock(paths.lock, wait=False, owner=_owner()) as held:
        if held:
            _record_failure(paths, message, "")


def status(run: RunConfig, store: Path) -> tuple[str, str | None]:
    """("done" | "running" | "failed" | "pending", the recorded error of a failed run)."""
    paths = run_paths(store, run_id=run.run_id(), probe_id=run.probe_id())
    if run_finished(run, store):
        return "done", None
    if paths.lock.exists():
        with exclusive_lock(paths.lock, wait=False) as held:
            if not held:
                return "running", None
    if paths.failure.exists():
        return "failed", read_json(paths.failure)["error"]
    return "pending", None
