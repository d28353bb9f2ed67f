"""Out-of-sample probabilities for every image of both splits (`overparam label-errors`), as steps of the run
store: models strong enough that a low probability for an image's given label says more about the label
than about how hard the image is.

Training split: K-fold cross-fitting. `FoldModel` part k trains the run's architecture and schedule on the
training images outside fold k (folds stratified by given label, the folds of `subsets.fold_of`, keyed as
the K-fold models of `SubsetTraining`) and predicts every image of both splits; each training image is read
from the one fold model that did not train on it. Part K (`whole(run)`) holds no fold out: it trains on
every training image.

Test split, as Northcutt, Athalye and Mueller (2021) did for the test sets with a training set of their own
("first pre-trained on the train set, then fine-tuned, using cross-validation", cleanlab/label-errors):
`TestFold` part k takes the model trained on the whole training split and fine-tunes it on the test images
outside test fold k (stratified by given test label) for `epochs` epochs at peak learning rate `lr`; it
predicts test fold k, which it never saw. Each test image is thus out of sample exactly once. With `epochs`
0 nothing is fine-tuned and the test probabilities are the whole-split model's.
"""

import io
import logging
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import torch

from overparam.config import RunConfig
from overparam.data import NORMALIZATION
from overparam.mislabel import keyed_generator
from overparam.models import build_model, predict_with_probabilities
from overparam.runs import prepared_run
from overparam.store.files import (
    file_record,
    load_checked,
    read_json,
    read_verified,
    save_checked,
    with_keys,
    write_csv,
    write_npz,
)
from overparam.store.steps import Step, StepContext, content_id
from overparam.subsets import fold_of
from overparam.train import TrainingData, train

log = logging.getLogger(__name__)


def train_folds(given: np.ndarray, run: RunConfig) -> np.ndarray:
    """[N] fold of each of the run's training images (those of its K-fold `SubsetTraining` models)."""
    return fold_of(given, folds=run.folds, key=(run.dataset, run.train_size, run.rate, run.seed))


def test_folds(given: np.ndarray, run: RunConfig) -> np.ndarray:
    """[M] fold of each of the run's test images, stratified by given test label, keyed apart from the
    training folds."""
    return fold_of(given, folds=run.folds, key=("test", run.dataset, run.test_size, run.seed))


def _aum(margins: torch.Tensor) -> np.ndarray:
    """Area under the margin (mean over epochs) of each trained-on image from a training's dynamics."""
    return margins.float().mean(dim=0).numpy()


# Which models a split's `model_test_acc` is of, in words.
MODELS_OF_SPLIT = {"train": "fold models", "test": "whole-split model before fine-tuning"}


def whole(run: RunConfig) -> int:
    """The `FoldModel` part that holds no fold out: the model of the whole training split."""
    return run.folds


@dataclass(frozen=True)
class FoldModel(Step):
    """Fold model `part` of `run.folds`: trained on the run's training images outside fold `part` (all of them
    for part `whole(run)`)."""

    run: RunConfig
    part: int
    kind = "label-fold-model"

    def step_id(self) -> str:
        settings = {"run_id": self.run.run_id(), "part": self.part, "folds": self.run.folds}
        return f"{self.run.run_id()}/{content_id(self.kind, settings)}"

    def compute(self, context: StepContext) -> dict[str, Any]:
        run, device = self.run, context.device
        prepared, splits = prepared_run(run, context)
        given = prepared.assigned_labels
        inside = train_folds(given, run) != self.part
        images = splits.train_images[torch.as_tensor(prepared.train_index, device=device)]
        test_index = torch.as_tensor(prepared.test_index, device=device)
        test_images, test_given = splits.test_images[test_index], splits.test_labels[test_index]
        chosen = torch.as_tensor(np.flatnonzero(inside), device=device)
        data = TrainingData(
            images=images[chosen],
            assigned_labels=torch.as_tensor(given, device=device)[chosen],
            mislabelled=torch.zeros(len(chosen), dtype=torch.bool, device=device),
            test_images=test_images,
            test_labels=test_given,
        )
        mean, std = NORMALIZATION[run.dataset]
        torch.manual_seed(int(keyed_generator("label-fold-init", run.seed, self.part).integers(2**62)))
        model = build_model(name=run.model, width=run.width, mean=mean, std=std).to(device)
        start = time.perf_counter()
        result = train(
            model=model,
            data=data,
            run=run,
            checkpoint=context.folder / "checkpoint.pt",
            progress=context.options.progress,
        )
        _, train_probabilities = predict_with_probabilities(model, images, precision=run.precision)
        _, test_probabilities = predict_with_probabilities(model, test_images, precision=run.precision)
        seconds = time.perf_counter() - start
        aum = np.full(len(given), np.nan, dtype=np.float32)
        aum[inside] = _aum(result.dynamics.margins)
        paths = [context.folder / name for name in ("fold.npz", "metrics.csv", "model.pt")]
        write_npz(
            paths[0],
            inside=inside,
            train_index=prepared.train_index,
            train_given=given,
            train_probabilities=train_probabilities.cpu().numpy(),
            test_index=prepared.test_index,
            test_given=test_given.cpu().numpy(),
            test_probabilities=test_probabilities.cpu().numpy(),
            aum=aum,
        )
        write_csv(with_keys(run.keys(), pd.DataFrame(result.metrics)), paths[1])
        save_checked(model.state_dict(), paths[2])
        last = result.metrics[-1]
        log.info(
            "%s (%s): %d images, test acc %.4f, %.0f s",
            "whole-split model" if self.part == whole(run) else f"fold model {self.part} of {run.folds}",
            run.run_id(),
            int(inside.sum()),
            last["test_acc"],
            seconds,
        )
        return {
            "run_id": run.run_id(),
            "part": self.part,
            "folds": run.folds,
            "n_trained": int(inside.sum()),
            "epochs": last["epoch"],
            "train_acc": last["train_acc"],
            "test_acc": last["test_acc"],
            "seconds": seconds,
            **file_record(paths),
        }

    def tidy(self, folder: Any) -> None:
        (folder / "checkpoint.pt").unlink(missing_ok=True)


@dataclass(frozen=True)
class TestFold(Step):
    """The whole-split model, fine-tuned on the run's test images outside test fold `part`; predicts that
    fold."""

    run: RunConfig
    part: int
    epochs: int
    lr: float
    kind = "label-test-fold"

    def needs(self) -> tuple[Step, ...]:
        return (FoldModel(self.run, whole(self.run)),)

    def step_id(self) -> str:
        settings = {"part": self.part, "epochs": self.epochs, "lr": float(self.lr)}
        return f"{self.run.run_id()}/{content_id(self.kind, settings, self.needs())}"

    def compute(self, context: StepContext) -> dict[str, Any]:
        run, device, store = self.run, context.device, context.store
        prepared, splits = prepared_run(run, context)
        test_index = torch.as_tensor(prepared.test_index, device=device)
        images, given = splits.test_images[test_index], splits.test_labels[test_index]
        held = test_folds(given.cpu().numpy(), run) == self.part
        mean, std = NORMALIZATION[run.dataset]
        model = build_model(name=run.model, width=run.width, mean=mean, std=std).to(device)
        pretrained = FoldModel(run, whole(run)).folder(store) / "model.pt"
        model.load_state_dict(load_checked(pretrained, map_location=device))
        start = time.perf_counter()
        aum = np.full(len(given), np.nan, dtype=np.float32)
        metrics = pd.DataFrame()
        if self.epochs > 0:
            tuning = replace(run, max_epochs=self.epochs, lr=self.lr, schedule="full")
            fitted = torch.as_tensor(np.flatnonzero(~held), device=device)
            out = torch.as_tensor(np.flatnonzero(held), device=device)
            data = TrainingData(
                images=images[fitted],
                assigned_labels=given[fitted],
                mislabelled=torch.zeros(len(fitted), dtype=torch.bool, device=device),
                test_images=images[out],
                test_labels=given[out],
            )
            result = train(
                model=model,
                data=data,
                run=tuning,
                checkpoint=context.folder / "checkpoint.pt",
                progress=context.options.progress,
            )
            aum[~held] = _aum(result.dynamics.margins)
            metrics = pd.DataFrame(result.metrics)
        _, probabilities = predict_with_probabilities(model, images, precision=run.precision)
        seconds = time.perf_counter() - start
        probabilities = probabilities.cpu().numpy()
        accuracy = float((probabilities[held].argmax(axis=1) == given.cpu().numpy()[held]).mean())
        paths = [context.folder / "test_fold.npz", context.folder / "metrics.csv"]
        write_npz(paths[0], held=held, probabilities=probabilities, aum=aum)
        write_csv(with_keys(run.keys(), metrics), paths[1])
        log.info(
            "test fold %d of %d (%s): fine-tuned %d epochs, held-out accuracy %.4f, %.0f s",
            self.part,
            run.folds,
            run.run_id(),
            self.epochs,
            accuracy,
            seconds,
        )
        return {
            "run_id": run.run_id(),
            "part": self.part,
            "epochs": self.epochs,
            "lr": self.lr,
            "n_held_out": int(held.sum()),
            "held_out_acc": accuracy,
            "seconds": seconds,
            **file_record(paths),
        }

    def tidy(self, folder: Any) -> None:
        (folder / "checkpoint.pt").unlink(missing_ok=True)


@dataclass(frozen=True)
class OutOfSample:
    """One split of one run: each image's original index, given label, out-of-sample probabilities [N, C]
    float32 (rows renormalised from float16), area under the margin where some model trained on it (mean
    over those models; NaN elsewhere), and what the models cost and scored."""

    index: np.ndarray
    given: np.ndarray
    probabilities: np.ndarray
    aum: np.ndarray
    record: dict[str, Any]


def _load(step: Step, store: Any, name: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    record = step.record(store)
    with np.load(io.BytesIO(read_verified(record, name))) as saved:
        return {key: saved[key] for key in saved.files}, read_json(record)


def train_split(run: RunConfig, store: Any) -> OutOfSample:
    """The training split's held-out probabilities from the run's finished fold models."""
    found = aum_sum = aum_count = None
    accuracies, seconds = [], 0.0
    for part in range(run.folds):
        saved, record = _load(FoldModel(run, part), store, "fold.npz")
        if found is None:
            found = np.full(saved["train_probabilities"].shape, np.nan, dtype=np.float32)
            aum_sum, aum_count = np.zeros(len(found)), np.zeros(len(found))
            index, given = saved["train_index"], saved["train_given"]
        out = ~saved["inside"]
        found[out] = saved["train_probabilities"][out]
        seen = ~np.isnan(saved["aum"])
        aum_sum[seen] += saved["aum"][seen]
        aum_count[seen] += 1
        accuracies.append(record["test_acc"])
        seconds += record["seconds"]
    assert found is not None and not np.isnan(found).any(), "the folds hold out every image once"
    with np.errstate(invalid="ignore"):
        aum = aum_sum / aum_count
    return OutOfSample(
        index=index,
        given=given,
        probabilities=found / found.sum(axis=1, keepdims=True),
        aum=aum,
        record={"model_test_acc": float(np.mean(accuracies)), "models": run.folds, "seconds": seconds},
    )


def test_split(run: RunConfig, store: Any, *, epochs: int, lr: float) -> OutOfSample:
    """The test split's cross-fitted probabilities from the run's finished test folds."""
    found = None
    saved, record = _load(FoldModel(run, whole(run)), store, "fold.npz")
    index, given = saved["test_index"], saved["test_given"]
    accuracy, seconds = float((saved["test_probabilities"].argmax(axis=1) == given).mean()), record["seconds"]
    for part in range(run.folds):
        tuned, record = _load(TestFold(run, part, epochs, lr), store, "test_fold.npz")
        if found is None:
            found = np.full(tuned["probabilities"].shape, np.nan, dtype=np.float32)
        held = tuned["held"]
        assert np.isnan(found[held]).all(), "each test image is held out by one test fold only"
        found[held] = tuned["probabilities"][held]
        seconds += record["seconds"]
    assert found is not None and not np.isnan(found).any(), "the test folds hold out every test image once"
    aum = _mean_aum_of_tuning(run, store, epochs=epochs, lr=lr, n=len(found))
    return OutOfSample(
        index=index,
        given=given,
        probabilities=found / found.sum(axis=1, keepdims=True),
        aum=aum,
        record={
            "model_test_acc": accuracy,
            "models": 1 + run.folds,
            "finetune_epochs": epochs,
            "finetune_lr": lr,
            "seconds": seconds,
        },
    )


def _mean_aum_of_tuning(run: RunConfig, store: Any, *, epochs: int, lr: float, n: int) -> np.ndarray:
    """Each test image's area under the margin over the fine-tunings that trained on it (NaN without)."""
    total, count = np.zeros(n), np.zeros(n)
    for part in range(run.folds):
        tuned, _ = _load(TestFold(run, part, epochs, lr), store, "test_fold.npz")
        seen = ~np.isnan(tuned["aum"])
        total[seen] += tuned["aum"][seen]
        count[seen] += 1
    with np.errstate(invalid="ignore"):
        return total / count
