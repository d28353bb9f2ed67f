"""The study's steps: a run's choice of images, its training (`TrainStep`) and a probe per perturbation
(`ProbeStep`, which needs the training), each a step of the run store (store/steps.py), which does the
locking, caching, resuming and failure records for them.
"""

import io
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from overparam import registry
from overparam.config import IDENTITY_SCHEMA, ConfigError, RunConfig
from overparam.mislabel import keyed_generator
from overparam.models import compiled, count_parameters, predict, predict_with_probabilities
from overparam.perturb import ProbeInputs
from overparam.perturb import get as get_perturbation
from overparam.probe import curves, flip_levels, identity_sigmas
from overparam.runs import PreparedRun, Splits, new_model, prepared_run, trained_model, training_data
from overparam.runtime import environment
from overparam.stats import wilson_interval
from overparam.store.files import (
    CorruptFileError,
    RunPaths,
    file_record,
    load_checked,
    read_json,
    read_verified,
    save_checked,
    with_keys,
    write_csv,
    write_npz,
)
from overparam.store.steps import (
    MissingInputError,
    Outcome,
    RunOptions,
    Step,
    StepContext,
    compute_step,
    execute_step,
    step_finished,
    step_status,
    with_needs,
)
from overparam.train import train

log = logging.getLogger(__name__)
LEVEL_CHUNK = 8  # levels probed between two saves: an interrupted probe loses at most one chunk
FP32_CHECK_IMAGES = 1000  # per split, predicted again in eager fp32 to check a bf16 or compiled probe


def train_run(prepared: PreparedRun, splits: Splits, *, progress: bool = True) -> dict[str, Any]:
    """Train one run into its folder (resuming from its checkpoint); returns its training record, which
    `TrainStep` writes last."""
    run, paths = prepared.run, prepared.paths
    device = splits.train_images.device
    data = training_data(prepared, splits)
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
    write_npz(
        paths.dynamics,
        margins=result.dynamics.margins.numpy(),
        predictions=result.dynamics.predictions.numpy(),
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
        **file_record([paths.metrics, paths.mislabels, paths.model, paths.final_predictions, paths.dynamics]),
    }
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
    prepared: PreparedRun,
    splits: Splits,
    *,
    perturbation: str = "blur",
    progress: bool = True,
    columns: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Probe one trained run under one perturbation at every level of its grid, resuming from its finished
    chunks of levels; returns the probe's record, which `ProbeStep` writes last. The model is the one in
    `prepared.paths` (a run's, or another training's of the same architecture, such as a lottery ticket's,
    whose `columns` then follow the run's keys in every table)."""
    run = prepared.run
    paths = prepared.paths.with_probe(run.probe_id(perturbation))
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
    kept = run.probability_levels_of(perturbation)
    probabilities = {  # [levels kept, images, classes]: level 0 from the unperturbed pass, the rest anew
        split: np.concatenate(
            [probabilities[split][None]]
            + ([kind.probabilities(images[split], kept[1:], inputs[split])] if len(kept) > 1 else [])
        )
        for split in images
    }
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
    keys = run.keys() | (columns or {})
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
        probability_levels=np.asarray(kept),
        train_probabilities=probabilities["train"],
        test_probabilities=probabilities["test"],
    )
    write_csv(with_keys(keys | probe_columns, curve_table), paths.curves)
    write_csv(flips, paths.flips)
    record = {
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
    }
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
    return record


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
class TrainStep(Step):
    """A run's training: its folder is the run's, `<run_id>`, and its record training.json."""

    run: RunConfig
    kind = "train"
    record_name = "training.json"
    lock_name = "run.lock"

    def step_id(self) -> str:
        return self.run.run_id()

    def compute(self, context: StepContext) -> dict[str, Any]:
        prepared, splits = prepared_run(self.run, context)
        return train_run(prepared, splits, progress=context.options.progress)

    def tidy(self, folder: Path) -> None:
        (folder / "checkpoint.pt").unlink(missing_ok=True)


@dataclass(frozen=True)
class ProbeStep(Step):
    """A run's probe under one perturbation: `<run_id>/<probe_id>`, record probe.json; needs the training."""

    run: RunConfig
    perturbation: str = "blur"
    kind = "probe"
    record_name = "probe.json"

    def step_id(self) -> str:
        return f"{self.run.run_id()}/{self.run.probe_id(self.perturbation)}"

    def needs(self) -> tuple[Step, ...]:
        return (TrainStep(self.run),)

    def compute(self, context: StepContext) -> dict[str, Any]:
        prepared, splits = prepared_run(self.run, context)
        return probe_run(prepared, splits, perturbation=self.perturbation, progress=context.options.progress)

    def tidy(self, folder: Path) -> None:
        shutil.rmtree(folder / "parts", ignore_errors=True)

    @classmethod
    def legacy_inputs_current(cls, record: Path) -> bool:
        """A probe recorded before records named their inputs names its model's digest, or, older still,
        was made by the training recorded before it."""
        training = record.parent.parent / TrainStep.record_name
        probed = read_json(record).get("model_sha256")
        if probed is None:
            return record.stat().st_mtime >= training.stat().st_mtime
        return probed == read_json(training)["files"]["model.pt"]


def steps_of(run: RunConfig) -> list[Step]:
    """Every step of one run: its training, a probe per perturbation, then the steps the registered
    experiments add when the run's settings ask for them (label-error scores, pruning, lottery tickets...)."""
    return [TrainStep(run), *(ProbeStep(run, name) for name in run.perturbations), *registry.steps_of(run)]


def run_finished(run: RunConfig, store: Path) -> bool:
    """Trained and probed under every perturbation of `run` (cheap, see `step_finished`)."""
    return all(step_finished(step, store) for step in steps_of(run))


def run_steps(run: RunConfig, options: RunOptions, *, steps: tuple[str, ...] = ("train", "probe")) -> None:
    """Compute the steps of `run` of the kinds named in `steps`, in this process; errors propagate."""
    for step in steps_of(run):
        if step.kind not in steps:
            continue
        try:
            compute_step(step, options)
        except MissingInputError:
            raise ConfigError(
                f"no trained model in {Path(options.store) / run.run_id()}; run `overparam train` with the "
                "same settings first"
            ) from None


def execute(run: RunConfig, options: RunOptions, *, wait: bool = True) -> Outcome:
    """Every step of one run in this process, as `execute_step`: one outcome for the run (failed or busy at
    its first step that is; done when any step was computed now; else cached)."""
    outcomes = []
    for step in with_needs(steps_of(run)):
        outcomes.append(execute_step(step, options, wait=wait))
        if outcomes[-1].status in ("failed", "busy"):
            return Outcome(run.run_id(), outcomes[-1].status, outcomes[-1].error)
    computed = any(outcome.status == "done" for outcome in outcomes)
    return Outcome(run.run_id(), "done" if computed else "cached")


def status(run: RunConfig, store: Path) -> tuple[str, str | None]:
    """("done" | "running" | "failed" | "pending", the recorded error of a failed step) of a whole run."""
    states = [step_status(step, store) for step in with_needs(steps_of(run))]
    for state in ("running", "failed", "pending"):
        found = [error for current, error in states if current == state]
        if found:
            return state, found[0]
    return "done", None
