"""Paths between two trained runs of one architecture (Garipov et al. 2018, their released
dnn-mode-connectivity): the straight line w(t) = (1 - t) w_a + t w_b, and the quadratic Bezier curve
w(t) = (1 - t)^2 w_a + 2 t (1 - t) m + t^2 w_b whose middle point m (from the line's midpoint) is trained to
minimise the training loss at a t drawn uniformly for every batch. At each of `points` evenly spaced t, the
batch-norm statistics are recomputed over the training images (train-mode passes, a cumulative average, as
their `update_bn`: an interpolated network's stored statistics are not its own), then every group's loss and
accuracy are measured in eval mode.

Groups (each endpoint's images with its own labels): `clean_a`, `mislabelled_a`, `clean_b`, `mislabelled_b`
with label `assigned` (what that run was trained on) and `true`; `disputed`, the images both runs trained on
with different labels (for two rates of one seed: the mislabels added at the higher rate), with label `a`
and `b`; `test` (run a's test images, true labels).

The two runs of a seed pair train on different images (image choice and mislabels are keyed by the seed),
so the curve trains on the union of both runs' (image, assigned label) pairs: a low-loss curve passes
through weights that fit both runs' training sets at once, mislabels included, except the disputed images,
which carry both labels.
"""

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F
from torch.nn.utils import parameters_to_vector, vector_to_parameters
from tqdm.auto import tqdm

from overparam.config import ConfigError, RunConfig
from overparam.execution import TrainStep
from overparam.experiments.landscape.settings import CurveSettings
from overparam.mislabel import keyed_generator
from overparam.models import INFERENCE_BATCH_SIZE, padded_logits
from overparam.runs import PreparedRun, Splits, new_model, prepared_run, trained_model
from overparam.store.files import (
    CorruptFileError,
    file_record,
    load_checked,
    read_json,
    save_checked,
    write_csv,
)
from overparam.store.steps import Step, StepContext, content_id
from overparam.train import _epoch_order

log = logging.getLogger(__name__)
PATHS = ("linear", "bezier")


def bezier(*, start: torch.Tensor, middle: torch.Tensor, end: torch.Tensor, t: float) -> torch.Tensor:
    """The quadratic Bezier curve through `start` (t = 0) and `end` (t = 1) with control point `middle`,
    all [D]."""
    return (1 - t) ** 2 * start + 2 * t * (1 - t) * middle + t**2 * end


def linear(*, start: torch.Tensor, end: torch.Tensor, t: float) -> torch.Tensor:
    return (1 - t) * start + t * end


def garipov_rate(*, lr: float, epoch: int, epochs: int) -> float:
    """Garipov et al.'s schedule at the start of 0-based `epoch`: `lr` for the first half, then linearly
    down to lr / 100 at 90 % of the epochs, lr / 100 after."""
    alpha = epoch / epochs
    factor = 1.0 if alpha <= 0.5 else (1.0 - (alpha - 0.5) / 0.4 * 0.99 if alpha <= 0.9 else 0.01)
    return lr * factor


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recompute_batch_norm(
    model: nn.Module, images: torch.Tensor, *, batch_size: int = INFERENCE_BATCH_SIZE
) -> bool:
    """Replace every batch-norm layer's running statistics by their average over uint8 `images` [N, H, W]
    (train-mode passes of `batch_size`, cumulative average); the model is left in eval mode. False (and
    nothing done) when the model has no batch norm."""
    layers = batch_norms(model)
    if not layers:
        model.eval()
        return False
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None
    model.train()
    for first in range(0, len(images), batch_size):
        model(images[first : first + batch_size, None].float().div_(255))
    for layer, momentum in zip(layers, momenta, strict=True):
        layer.momentum = momentum
    model.eval()
    return True


@torch.inference_mode()
def logits_of(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Eval-mode logits [N, classes] float32 of uint8 `images` [N, H, W], in padded batches of one shape
    (`models.padded_logits`)."""
    model.eval()
    out = []
    for first in range(0, len(images), INFERENCE_BATCH_SIZE):
        batch = images[first : first + INFERENCE_BATCH_SIZE, None].float().div_(255)
        out.append(padded_logits(model, batch, size=INFERENCE_BATCH_SIZE).float())
    return torch.cat(out)


@dataclass(frozen=True)
class Group:
    """Images (positions into the pair's union [U], or into the test images) and a label each, [n]."""

    name: str
    label: str
    positions: torch.Tensor
    labels: torch.Tensor
    test: bool = False


@dataclass(frozen=True)
class PairData:
    """Both runs' training images as one union (uint8 [U, H, W], original indices [U]), the curve's training
    pairs (positions into the union [P], labels [P]), the groups, and the test images [M, H, W]."""

    images: torch.Tensor
    pair_positions: torch.Tensor
    pair_labels: torch.Tensor
    groups: tuple[Group, ...]
    test_images: torch.Tensor


def pair_data(*, a: PreparedRun, b: PreparedRun, splits: Splits, device: torch.device) -> PairData:
    """The union of two prepared runs' training images, their labels and the groups (module docstring)."""
    union = np.union1d(a.train_index, b.train_index)
    where = {"a": np.searchsorted(union, a.train_index), "b": np.searchsorted(union, b.train_index)}
    prepared = {"a": a, "b": b}
    groups, pairs = [], set()
    as_tensor = lambda values: torch.as_tensor(np.asarray(values, dtype=np.int64), device=device)  # noqa: E731
    for name, run in prepared.items():
        assigned, true, mislabelled = run.assigned_labels, run.true_labels, run.mislabelled
        pairs |= set(zip(where[name].tolist(), assigned.tolist(), strict=True))
        for group, mask in (("clean", ~mislabelled), ("mislabelled", mislabelled)):
            for label, labels in (("assigned", assigned), ("true", true)):
                groups.append(
                    Group(f"{group}_{name}", label, as_tensor(where[name][mask]), as_tensor(labels[mask]))
                )
    label_a = dict(zip(where["a"].tolist(), a.assigned_labels.tolist(), strict=True))
    label_b = dict(zip(where["b"].tolist(), b.assigned_labels.tolist(), strict=True))
    disputed = sorted(p for p in label_a.keys() & label_b.keys() if label_a[p] != label_b[p])
    for label, labels in (("a", label_a), ("b", label_b)):
        groups.append(Group("disputed", label, as_tensor(disputed), as_tensor([labels[p] for p in disputed])))
    test_labels = splits.test_labels[torch.as_tensor(a.test_index, device=splits.test_labels.device)]
    groups.append(
        Group("test", "true", torch.arange(len(a.test_index), device=device), test_labels.to(device), True)
    )
    ordered = sorted(pairs)
    return PairData(
        images=splits.train_images[torch.as_tensor(union, device=splits.train_images.device)].to(device),
        pair_positions=as_tensor([p for p, _ in ordered]),
        pair_labels=as_tensor([label for _, label in ordered]),
        groups=tuple(groups),
        test_images=splits.test_images[torch.as_tensor(a.test_index, device=splits.test_images.device)].to(
            device
        ),
    )


def group_rows(model: nn.Module, data: PairData) -> list[dict[str, Any]]:
    """Per group and label: n, correct (argmax equals the label), loss (mean cross-entropy, nats)."""
    logits = {False: logits_of(model, data.images), True: logits_of(model, data.test_images)}
    rows = []
    for group in data.groups:
        chosen = logits[group.test][group.positions]
        n = len(group.positions)
        rows.append(
            {
                "group": group.name,
                "label": group.label,
                "n": n,
                "correct": int((chosen.argmax(dim=1) == group.labels).sum()) if n else 0,
                "loss": F.cross_entropy(chosen, group.labels).item() if n else math.nan,
            }
        )
    return rows


def barriers(path_table: pd.DataFrame) -> pd.DataFrame:
    """Per path, group and label: the barrier of the loss and of the error (1 - accuracy): the largest excess
    over the straight line between the path's two ends, max_t [v(t) - ((1 - t) v(0) + t v(1))], and the t
    where it is largest."""
    frame = path_table.assign(error=1 - path_table["correct"] / path_table["n"])
    rows = []
    for keys, path in frame.groupby(["path", "group", "label"], sort=True):
        path = path.sort_values("t")
        t = path["t"].to_numpy()
        row = dict(zip(["path", "group", "label"], keys, strict=True))
        for metric in ("loss", "error"):
            values = path[metric].to_numpy()
            excess = values - ((1 - t) * values[0] + t * values[-1])
            top = int(np.nanargmax(excess)) if np.isfinite(excess).any() else 0
            row |= {f"{metric}_barrier": float(excess[top]), f"{metric}_barrier_t": float(t[top])}
            row |= {f"{metric}_start": float(values[0]), f"{metric}_end": float(values[-1])}
            row |= {f"{metric}_max": float(np.nanmax(values)) if np.isfinite(values).any() else math.nan}
        rows.append(row)
    return pd.DataFrame(rows)


def train_middle(
    *,
    model: nn.Module,
    start: torch.Tensor,
    end: torch.Tensor,
    data: PairData,
    curve: CurveSettings,
    key: tuple,
    progress: bool,
) -> torch.Tensor:
    """The trained middle point [D] of the Bezier curve from `start` to `end` ([D] each, the flattened
    parameters of `model`), as Garipov et al. train it (`CurveSettings`)."""
    names = [name for name, _ in model.named_parameters()]
    shapes = [parameter.shape for _, parameter in model.named_parameters()]
    middle = ((start + end) / 2).clone().requires_grad_(True)
    optimizer = torch.optim.SGD(
        [middle], lr=curve.lr, momentum=curve.momentum, weight_decay=curve.weight_decay
    )
    n = len(data.pair_positions)
    steps = max(1, n // curve.batch_size)
    draws = torch.Generator().manual_seed(int(keyed_generator("bezier-t", *key).integers(2**62)))
    seed = int(keyed_generator("bezier-order", *key).integers(2**31))
    model.train()
    bar = tqdm(
        total=curve.epochs * steps, desc="bezier curve", unit="batch", disable=not progress, leave=False
    )
    for epoch in range(curve.epochs):
        for group in optimizer.param_groups:
            group["lr"] = garipov_rate(lr=curve.lr, epoch=epoch, epochs=curve.epochs)
        for batch in torch.tensor_split(_epoch_order(seed, epoch, n).to(start.device), steps):
            t = torch.rand((), generator=draws).item()
            pieces = torch.split(
                bezier(start=start, middle=middle, end=end, t=t), [s.numel() for s in shapes]
            )
            weights = {name: piece.view(s) for name, piece, s in zip(names, pieces, shapes, strict=True)}
            images = data.images[data.pair_positions[batch], None].float().div_(255)
            loss = F.cross_entropy(functional_call(model, weights, (images,)), data.pair_labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            bar.update()
    bar.close()
    return middle.detach()


@dataclass(frozen=True)
class PathStep(Step):
    """The linear path and the trained Bezier curve between the trained models of `run_a` and `run_b`."""

    run_a: RunConfig
    run_b: RunConfig
    curve: CurveSettings
    kind = "landscape-path"

    def identity(self) -> dict[str, Any]:
        return {"run_a": self.run_a.run_id(), "run_b": self.run_b.run_id(), **asdict(self.curve)}

    def step_id(self) -> str:
        return f"{self.run_a.run_id()}/{content_id(self.kind, self.identity())}"

    def needs(self) -> tuple[Step, ...]:
        return (TrainStep(self.run_a), TrainStep(self.run_b))

    def compute(self, context: StepContext) -> dict[str, Any]:
        a, b, device = self.run_a, self.run_b, context.device
        if (a.dataset, a.model, a.width) != (b.dataset, b.model, b.width):
            raise ConfigError("a path joins two runs of one data set and architecture; choose such a pair")
        prepared_a, splits = prepared_run(a, context)
        prepared_b, _ = prepared_run(b, context)
        data = pair_data(a=prepared_a, b=prepared_b, splits=splits, device=device)
        endpoints = [
            trained_model(run, prepared.paths, device) for run, prepared in ((a, prepared_a), (b, prepared_b))
        ]
        stored = [group_rows(model, data) for model in endpoints]  # with their own stored statistics
        start, end = (parameters_to_vector(model.parameters()).detach() for model in endpoints)
        begun = time.perf_counter()
        middle_file = context.folder / "bezier_middle.pt"
        made_from = [
            read_json(p.paths.training)["files"][p.paths.model.name] for p in (prepared_a, prepared_b)
        ]
        middle = self._saved_middle(middle_file, made_from, device)
        if middle is None:
            middle = train_middle(
                model=new_model(a).to(device),
                start=start,
                end=end,
                data=data,
                curve=self.curve,
                key=(a.run_id(), b.run_id()),
                progress=context.options.progress,
            )
            save_checked({"middle": middle.cpu(), "made_from": made_from}, middle_file)
        curve_seconds = time.perf_counter() - begun
        model = new_model(a).to(device)
        rows = []
        ts = np.linspace(0.0, 1.0, self.curve.points)
        bar = tqdm(total=2 * len(ts), desc="path points", disable=not context.options.progress, leave=False)
        for path in PATHS:
            for t in ts:
                weights = (
                    linear(start=start, end=end, t=t)
                    if path == "linear"
                    else bezier(start=start, middle=middle, end=end, t=t)
                )
                vector_to_parameters(weights, model.parameters())
                recomputed = recompute_batch_norm(model, data.images)
                rows += [{"path": path, "t": float(t), **row} for row in group_rows(model, data)]
                bar.update()
        bar.close()
        table = pd.DataFrame(rows)
        table.insert(0, "run_a", a.run_id())
        table.insert(1, "run_b", b.run_id())
        path_file = context.folder / "path.csv"
        write_csv(table, path_file)
        ends = {"t0_stored": stored[0], "t1_stored": stored[1]}
        return {
            **self.identity(),
            "batch_norm_recomputed": recomputed,
            "union_images": len(data.images),
            "curve_pairs": len(data.pair_positions),
            "endpoints_with_stored_statistics": ends,
            "curve_seconds": curve_seconds,
            "seconds": time.perf_counter() - begun,
            **file_record([path_file, middle_file]),
        }

    @staticmethod
    def _saved_middle(path: Path, made_from: list[str], device: torch.device) -> torch.Tensor | None:
        """The middle point an interrupted attempt saved, when intact and trained between these models."""
        if not path.exists():
            return None
        try:
            saved = load_checked(path, map_location=device)
        except CorruptFileError:
            return None
        return saved["middle"] if saved.get("made_from") == made_from else None
