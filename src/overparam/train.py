"""Over-training (PROTOCOL step 3): Adam under a one-cycle schedule, with the eval-mode accuracy on the
assigned labels of the whole training set measured after every epoch. Schedule "full" trains every epoch of
the schedule (the target counts as reached when the last epoch reaches it); "target" stops at the first
epoch that reaches the target, or when the epoch budget ends.

Data stays on the device as uint8 tensors; a batch is an index into them. Every epoch ends in a checkpoint
from which an interrupted run continues exactly where it stopped.

The loop is fixed; what a sparse network needs is added by callbacks (lottery/training.py: keep a mask,
grow a penalty), and a training may start and stop at any iteration of its schedule (rewinding, open_lth's
`start_step`): iterations are numbered from 0 across epochs, each epoch's data order stays that of the whole
schedule, and the learning rate is the schedule's at that iteration.
"""

import logging
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from overparam.adversarial import adversarial_batch, start_generator
from overparam.augment import augment_batch, epoch_draws
from overparam.config import RunConfig
from overparam.mislabel import keyed_generator
from overparam.models import autocast, compiled, predict
from overparam.runtime import trajectory_environment
from overparam.store.files import CorruptFileError, load_checked, save_checked

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingData:
    """One run's tensors, all on the training device."""

    images: torch.Tensor  # [N, H, W] uint8
    assigned_labels: torch.Tensor  # [N] int64, what the model is trained on
    mislabelled: torch.Tensor  # [N] bool
    test_images: torch.Tensor  # [M, H, W] uint8
    test_labels: torch.Tensor  # [M] int64, true labels


@dataclass(frozen=True)
class Evaluation:
    """Eval-mode predictions of the unblurred images after an epoch, and the accuracies they give."""

    train_predictions: torch.Tensor  # [N] int64, which the probe's own sigma 0 is checked against
    test_predictions: torch.Tensor  # [M] int64
    accuracy: dict[str, float]  # train_acc, mislabelled_train_acc (NaN when none), test_acc


def evaluate(model: nn.Module, data: TrainingData, *, precision: str = "fp32") -> Evaluation:
    """Accuracy on the assigned labels, on the mislabelled subset (assigned labels) and on the test set
    (true labels)."""
    train_predictions = predict(model, data.images, precision=precision)
    test_predictions = predict(model, data.test_images, precision=precision)
    correct = train_predictions == data.assigned_labels
    mislabelled = correct[data.mislabelled]
    accuracy = {
        "train_acc": correct.float().mean().item(),
        "mislabelled_train_acc": mislabelled.float().mean().item() if len(mislabelled) else math.nan,
        "test_acc": (test_predictions == data.test_labels).float().mean().item(),
    }
    return Evaluation(train_predictions, test_predictions, accuracy)


@dataclass(frozen=True)
class TrainingResult:
    metrics: list[dict[str, Any]]  # one row per epoch
    final: Evaluation  # after the last epoch, with the weights the run keeps
    dynamics: "Dynamics"  # what the training forward passes saw of every image, epoch by epoch


@dataclass(frozen=True)
class Dynamics:
    """Each training image as its own minibatch's forward pass saw it, once per epoch (train mode, the
    weights of that step; an augmented or adversarial batch's images as augmented or attacked): what the area
    under the margin (Pleiss et al. 2020) and forgetting events (Toneva et al. 2019) are computed from. Rows
    follow the data order of `TrainingData` (positions, not original indices)."""

    margins: torch.Tensor  # [epochs, N] float32: assigned label's logit minus the largest other logit
    predictions: torch.Tensor  # [epochs, N] uint8: argmax of the logits


def margins_and_predictions(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [B, C], labels [B] -> (assigned logit minus the largest other logit [B] float32, argmax [B]
    uint8)."""
    logits = logits.detach().float()
    assigned = logits.gather(1, labels[:, None])[:, 0]
    others = logits.scatter(1, labels[:, None], float("-inf")).amax(dim=1)
    return assigned - others, logits.argmax(dim=1).to(torch.uint8)


class Callback:
    """What a training can be extended by. A callback is a function of the iteration alone (no state of its
    own), so an interrupted training that resumes repeats it exactly."""

    def before_update(self, model: nn.Module, iteration: int) -> None:
        """After the backward pass of `iteration`, before the optimizer's step: may change the gradients."""

    def after_update(self, model: nn.Module, iteration: int) -> None:
        """After the optimizer's step of `iteration`: may change the weights."""


def finished_training(rows: list[dict[str, Any]], run: RunConfig, *, stop: int | None = None) -> bool:
    """Whether training that has produced metrics `rows` (one per epoch) is over: every epoch of the
    schedule trained (the last row is the schedule's last epoch, or holds iteration `stop`), or with schedule
    "target" the last epoch reached the target."""
    if not rows:
        return False
    if run.schedule == "target" and rows[-1]["train_acc"] >= run.target_acc:
        return True
    return rows[-1]["epoch"] >= run.max_epochs or (stop is not None and rows[-1]["iterations"] >= stop)


def _epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The data order of one epoch, a function of (seed, epoch) only, so a resumed run sees the same."""
    generator = torch.Generator().manual_seed(int(keyed_generator("order", seed, epoch).integers(2**62)))
    return torch.randperm(n, generator=generator)


def _resume_state(checkpoint: Path | None, run: RunConfig, device: torch.device) -> dict[str, Any] | None:
    """The checkpoint's state when it is intact, of this run and made in this environment (device, PyTorch,
    CPU threads); otherwise None, after saying why (a damaged one is also removed)."""
    if checkpoint is None or not checkpoint.exists():
        return None
    try:
        state = load_checked(checkpoint, map_location=device)
    except CorruptFileError as error:
        log.warning("%s: training this run again from the start", error)
        checkpoint.unlink()
        return None
    if "margins" not in state:
        log.warning("%s predates the recording of training dynamics: training from the start", checkpoint)
        return None
    if not run.trains_as(state["run"]):
        log.warning("%s holds other settings: training this run from the start", checkpoint)
        return None
    here = trajectory_environment(device)
    if state.get("environment") != here:
        log.warning(
            "%s was made on %s, this process runs on %s: training from the start, so that one environment "
            "makes the whole model",
            checkpoint,
            state.get("environment", "an unrecorded environment"),
            here,
        )
        return None
    log.info("resuming %s after epoch %d", run.run_id(), state["metrics"][-1]["epoch"])
    return state


def steps_per_epoch(run: RunConfig, n: int) -> int:
    """Iterations per epoch of `n` training images: near-equal batches covering every image every epoch."""
    return max(1, n // run.batch_size)


def _schedule_at(schedule: torch.optim.lr_scheduler.LRScheduler, iteration: int) -> None:
    """Advance a fresh `schedule` to `iteration` without training (a rewound training starts there)."""
    with warnings.catch_warnings():  # stepping a schedule before its optimizer is the point here
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(iteration):
            schedule.step()


def train(
    *,
    model: nn.Module,
    data: TrainingData,
    run: RunConfig,
    checkpoint: Path | None = None,
    progress: bool = True,
    callbacks: Sequence[Callback] = (),
    start: int = 0,
    stop: int | None = None,
) -> TrainingResult:
    """Train `model` in place for `run.schedule` (see the module); returns one metrics row per epoch (epoch,
    iterations done, loss, train_acc, mislabelled_train_acc, test_acc, lr, seconds) and the last evaluation.
    Resumes from `checkpoint` when it holds this run. With `start`, the first `start` iterations of the
    schedule are skipped (a fresh optimizer, the learning rate and data order of iteration `start` on); with
    `stop`, training ends after iteration `stop` - 1, evaluated there. Margins of images an epoch skipped are
    NaN in the dynamics (predictions 255)."""
    n = len(data.images)
    per_epoch = steps_per_epoch(run, n)
    total = run.max_epochs * per_epoch
    if not 0 <= start < (total if stop is None else stop) <= total:
        raise ValueError(f"iterations {start} to {stop} are not within the schedule's {total}")
    forward = compiled(model, enabled=run.compile)
    optimizer = torch.optim.Adam(model.parameters(), lr=run.lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=run.lr, total_steps=total)
    _schedule_at(schedule, start)
    rows: list[dict[str, Any]] = []
    margins: list[torch.Tensor] = []  # per epoch, [N] on the device
    predictions: list[torch.Tensor] = []
    final: Evaluation | None = None
    state = _resume_state(checkpoint, run, data.images.device)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        torch.set_rng_state(state["cpu_rng"])
        if state["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        rows, final = state["metrics"], Evaluation(**state["evaluation"])
        margins, predictions = list(state["margins"]), list(state["predictions"])
    if finished_training(rows, run, stop=stop):
        return TrainingResult(rows, final, _dynamics(margins, predictions))
    done = rows[-1].get("iterations", rows[-1]["epoch"] * per_epoch) if rows else start
    bar = tqdm(
        total=(stop or total) - start,
        initial=done - start,
        unit="batch",
        desc=f"train rate={run.rate:.4g} seed={run.seed}",
        disable=not progress,
        leave=False,
    )
    model.train()
    for epoch in range(done // per_epoch + 1, run.max_epochs + 1):
        began = time.perf_counter()
        order = _epoch_order(run.seed, epoch, n).to(data.images.device)
        loss_sum = torch.zeros((), device=data.images.device)
        margin = torch.full((n,), math.nan, device=data.images.device)
        predicted = torch.full((n,), 255, dtype=torch.uint8, device=data.images.device)
        starts = start_generator(run.seed, epoch)
        draws = epoch_draws(run.augment, seed=run.seed, epoch=epoch, n=n)
        if draws is not None:
            offsets, flips = (tensor.to(data.images.device) for tensor in draws)
        seen = 0
        for number, batch in enumerate(torch.tensor_split(order, per_epoch)):
            iteration = (epoch - 1) * per_epoch + number
            if iteration < done:
                continue
            if stop is not None and iteration >= stop:
                break
            images = data.images[batch]
            if draws is not None:
                images = augment_batch(images, offsets[batch], flips[batch])
            images = images[:, None].float().div_(255)
            if run.adversarial != "none":
                images = adversarial_batch(
                    forward,
                    images,
                    data.assigned_labels[batch],
                    method=run.adversarial,
                    epsilon=run.adversarial_epsilon,
                    steps=run.adversarial_steps,
                    generator=starts,
                    precision=run.precision,
                )
            with autocast(run.precision, images.device):
                logits = forward(images)
                loss = F.cross_entropy(logits, data.assigned_labels[batch])
            margin[batch], predicted[batch] = margins_and_predictions(logits, data.assigned_labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for callback in callbacks:
                callback.before_update(model, iteration)
            optimizer.step()
            for callback in callbacks:
                callback.after_update(model, iteration)
            schedule.step()
            loss_sum += loss.detach() * len(batch)
            seen += len(batch)
            done = iteration + 1
            bar.update()
        margins.append(margin)
        predictions.append(predicted)
        final = evaluate(forward, data, precision=run.precision)
        row = {"epoch": epoch, "iterations": done, "loss": loss_sum.item() / max(seen, 1), **final.accuracy}
        row["lr"] = schedule.get_last_lr()[0]
        if data.images.device.type == "cuda":
            torch.cuda.synchronize()
        row["seconds"] = time.perf_counter() - began
        rows.append(row)
        bar.set_postfix(train_acc=f"{row['train_acc']:.4f}", test_acc=f"{row['test_acc']:.4f}")
        if not progress:  # a log line per epoch stands in for the bar when output is not a terminal
            log.info(
                "  epoch %d/%d: loss %.4f, train acc %.4f, mislabelled acc %.4f, test acc %.4f, %.1f s",
                epoch,
                run.max_epochs,
                row["loss"],
                row["train_acc"],
                row["mislabelled_train_acc"],
                row["test_acc"],
                row["seconds"],
            )
        if checkpoint is not None:
            save_checked(
                {
                    "run": run.training(),
                    "environment": trajectory_environment(data.images.device),
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(),
                    "metrics": rows,
                    "evaluation": asdict(final),
                    "margins": torch.stack(margins),
                    "predictions": torch.stack(predictions),
                    "cpu_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                },
                checkpoint,
            )
        if finished_training(rows, run, stop=stop):
            break
    bar.close()
    assert final is not None, "max_epochs >= 1 is validated with the settings"
    return TrainingResult(rows, final, _dynamics(margins, predictions))


def _dynamics(margins: list[torch.Tensor], predictions: list[torch.Tensor]) -> Dynamics:
    return Dynamics(margins=torch.stack(margins).cpu(), predictions=torch.stack(predictions).cpu())
