"""How wide a trained minimum is, per group of images (after Fort and Jastrzebski 2019's "tunnels"): the
loss and fit of each group at theta + alpha delta along random directions delta from the trained weights
theta, filter-normalised as Li et al. (2018, "Visualizing the loss landscape of neural nets", their released
net_plotter.py with ignore="biasbn"): Gaussian per parameter, each filter (a weight tensor's slice along its
first axis) rescaled to the norm of that filter of theta, biases and batch-norm parameters held at 0.
Evaluated in eval mode with the model's stored batch-norm statistics, as their plots are.

A group's `half_radius` along a direction: the alpha at which its fraction fit falls to half its value at
alpha 0 (linear between the grid's alphas; NaN when it stays above half over the whole grid). A minimum
that is narrower for the mislabelled images has a smaller half radius for them than for the clean images.
"""

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters
from tqdm.auto import tqdm

from overparam.config import RunConfig
from overparam.execution import TrainStep
from overparam.experiments.landscape.paths import Group, PairData, group_rows
from overparam.mislabel import keyed_generator
from overparam.runs import PreparedRun, Splits, prepared_run, trained_model
from overparam.store.files import file_record, with_keys, write_csv
from overparam.store.steps import Step, StepContext, content_id


def filter_normalised_direction(model: nn.Module, *, key: tuple) -> torch.Tensor:
    """A random direction [D] over `model`'s parameters (in `parameters()` order), filter-normalised (module
    docstring), determined by `key` (drawn on the CPU)."""
    generator = torch.Generator().manual_seed(int(keyed_generator("direction", *key).integers(2**62)))
    pieces = []
    for parameter in model.parameters():
        weights = parameter.detach().cpu()
        if weights.dim() <= 1:
            pieces.append(torch.zeros(weights.numel()))
            continue
        direction = torch.randn(weights.shape, generator=generator)
        rows, theta = direction.reshape(len(direction), -1), weights.reshape(len(weights), -1)
        scale = theta.norm(dim=1, keepdim=True) / (rows.norm(dim=1, keepdim=True) + 1e-10)
        pieces.append((rows * scale).reshape(-1))
    return torch.cat(pieces).to(next(model.parameters()).device)


def half_radius(*, radii: np.ndarray, fit: np.ndarray) -> float:
    """The radius where `fit` [K] over ascending `radii` [K] (radii[0] = 0) first falls to half of fit[0],
    linear between grid points; NaN when it never does (or fit[0] is 0)."""
    if fit[0] <= 0:
        return float("nan")
    below = np.flatnonzero(fit <= fit[0] / 2)
    if not len(below):
        return float("nan")
    k = below[0]
    share = (fit[k - 1] - fit[0] / 2) / (fit[k - 1] - fit[k])
    return float(radii[k - 1] + share * (radii[k] - radii[k - 1]))


def half_radii(tunnel: pd.DataFrame) -> pd.DataFrame:
    """Per run, direction and group (label assigned, and the test set): the half radius."""
    frame = tunnel[tunnel["label"].isin(["assigned"]) | (tunnel["group"] == "test")]
    rows = []
    keys = ["run_id", "rate", "seed", "direction", "group"]
    for values, line in frame.groupby(keys, sort=True):
        line = line.sort_values("radius")
        fit = (line["correct"] / line["n"]).to_numpy()
        rows.append(
            {
                **dict(zip(keys, values, strict=True)),
                "half_radius": half_radius(radii=line["radius"].to_numpy(), fit=fit),
            }
        )
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class TunnelStep(Step):
    """Loss and fit of each group of `run`'s images along `directions` filter-normalised random directions
    from its trained weights, at `radii` (alpha; 0 first)."""

    run: RunConfig
    directions: int
    radii: tuple[float, ...]
    kind = "landscape-tunnel"

    def identity(self) -> dict[str, Any]:
        return {"run_id": self.run.run_id(), "directions": self.directions, "radii": list(self.radii)}

    def step_id(self) -> str:
        return f"{self.run.run_id()}/{content_id(self.kind, self.identity())}"

    def needs(self) -> tuple[Step, ...]:
        return (TrainStep(self.run),)

    def compute(self, context: StepContext) -> dict[str, Any]:
        run, device = self.run, context.device
        prepared, splits = prepared_run(run, context)
        model = trained_model(run, prepared.paths, device)
        data = run_groups(prepared=prepared, splits=splits, device=device)
        theta = parameters_to_vector(model.parameters()).detach().clone()
        rows = []
        bar = tqdm(
            total=self.directions * len(self.radii), desc="tunnel", disable=not context.options.progress
        )
        for number in range(self.directions):
            direction = filter_normalised_direction(model, key=(run.run_id(), number))
            for radius in self.radii:
                vector_to_parameters(theta + radius * direction, model.parameters())
                rows += [{"direction": number, "radius": radius, **row} for row in group_rows(model, data)]
                bar.update()
        bar.close()
        table = with_keys(run.keys() | {"run_id": run.run_id()}, pd.DataFrame(rows))
        path = context.folder / "tunnel.csv"
        write_csv(table, path)
        return {**self.identity(), **file_record([path])}


def run_groups(*, prepared: PreparedRun, splits: Splits, device: torch.device) -> PairData:
    """One run's groups as `paths.group_rows` reads them: clean and mislabelled training images (labels
    assigned and true) and the test set."""
    images = splits.train_images[torch.as_tensor(prepared.train_index, device=splits.train_images.device)].to(
        device
    )
    groups = []
    for group, mask in (("clean", ~prepared.mislabelled), ("mislabelled", prepared.mislabelled)):
        positions = torch.as_tensor(np.flatnonzero(mask), device=device)
        for label, labels in (("assigned", prepared.assigned_labels), ("true", prepared.true_labels)):
            groups.append(Group(group, label, positions, torch.as_tensor(labels[mask], device=device)))
    test_index = torch.as_tensor(prepared.test_index, device=splits.test_images.device)
    test_labels = splits.test_labels[test_index].to(device)
    groups.append(Group("test", "true", torch.arange(len(test_index), device=device), test_labels, True))
    return PairData(
        images=images,
        pair_positions=torch.arange(len(images), device=device),
        pair_labels=torch.as_tensor(prepared.assigned_labels, device=device),
        groups=tuple(groups),
        test_images=splits.test_images[test_index].to(device),
    )
