"""Training in a random subspace (Li et al. 2018): the weights of a run's model are theta_0 + P z, theta_0 its
seeded initialisation (`execution.new_model`), P a keyed projection (`projections`) and only z [d] trained,
from z = 0. Dimension 0 stands for the full network trained directly with the same optimiser and epochs: the
baseline that d_int90 is measured against.

A `SubspaceTraining` is a step of the run store, in the folder of the run whose data it trains on. Li et al.'s
optimiser: Adam at a constant learning rate (their beta2 0.99), the data in a keyed order per epoch.
"""

import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F
from tqdm.auto import tqdm

from overparam.config import RunConfig
from overparam.experiments.landscape.projections import chosen_projection, make_projection
from overparam.experiments.landscape.settings import SubspaceSettings
from overparam.models import count_parameters, predict
from overparam.runs import new_model, prepared_run
from overparam.store.files import file_record, with_keys, write_csv
from overparam.store.steps import Step, StepContext, content_id
from overparam.train import _epoch_order

log = logging.getLogger(__name__)


class SubspaceModel(nn.Module):
    """`module` with its parameters replaced by theta_0 + P z: theta_0 [D] is a frozen copy of the module's
    parameters when wrapped, `projection` maps z [d] to [D], and `z` [d] (zeros at first) is the only
    parameter. Buffers (batch-norm statistics) stay the module's own."""

    def __init__(self, module: nn.Module, projection: nn.Module) -> None:
        super().__init__()
        named = [(name, parameter) for name, parameter in module.named_parameters()]
        self.names = [name for name, _ in named]
        self.shapes = [parameter.shape for _, parameter in named]
        self.register_buffer("theta0", torch.cat([p.detach().reshape(-1) for _, p in named]).clone())
        module.requires_grad_(False)
        self.module = module
        self.projection = projection
        self.z = nn.Parameter(torch.zeros(projection.d, device=self.theta0.device))

    def weights(self) -> dict[str, torch.Tensor]:
        """The module's parameters at the current z, by name."""
        flat = self.theta0 + self.projection(self.z)
        pieces = torch.split(flat, [math.prod(shape) for shape in self.shapes])
        return {
            name: piece.view(shape)
            for name, piece, shape in zip(self.names, pieces, self.shapes, strict=True)
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.module, self.weights(), (x,))


def fit_table(
    *,
    predictions: np.ndarray,
    assigned: np.ndarray,
    true: np.ndarray,
    mislabelled: np.ndarray,
    test: np.ndarray,
    test_labels: np.ndarray,
) -> pd.DataFrame:
    """Per group (clean, mislabelled training images; test): n, `fit` (predicted as the label trained on:
    assigned; test: true) and `agree_true` (predicted as the true label), counts. Arrays [N] / [M]."""
    rows = []
    for group, mask in (("clean", ~mislabelled), ("mislabelled", mislabelled)):
        rows.append(
            {
                "group": group,
                "n": int(mask.sum()),
                "fit": int((predictions[mask] == assigned[mask]).sum()),
                "agree_true": int((predictions[mask] == true[mask]).sum()),
            }
        )
    correct = int((test == test_labels).sum())
    rows.append({"group": "test", "n": len(test), "fit": correct, "agree_true": correct})
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class SubspaceTraining(Step):
    """The model of `run` trained in a random subspace of dimension `dim` (0: the full network) on the run's
    training images and assigned labels, as `settings` say."""

    run: RunConfig
    dim: int
    settings: SubspaceSettings
    kind = "subspace-training"

    def identity(self) -> dict[str, Any]:
        return {"run_id": self.run.run_id(), "dim": self.dim, **asdict(self.settings)}

    def step_id(self) -> str:
        return f"{self.run.run_id()}/{content_id(self.kind, self.identity())}"

    def compute(self, context: StepContext) -> dict[str, Any]:
        run, device, settings = self.run, context.device, self.settings
        prepared, splits = prepared_run(run, context)
        images = splits.train_images[torch.as_tensor(prepared.train_index, device=device)]
        labels = torch.as_tensor(prepared.assigned_labels, device=device)
        test_images = splits.test_images[torch.as_tensor(prepared.test_index, device=device)]
        network = new_model(run).to(device)
        n_parameters = count_parameters(network)
        projection = "full"
        if self.dim:
            projection = chosen_projection(settings.projection, d=self.dim, D=n_parameters)
            key = (run.dataset, run.model, run.width, run.seed)
            made = make_projection(projection, d=self.dim, D=n_parameters, key=key).to(device)
            model: nn.Module = SubspaceModel(network, made)
        else:
            model = network
        trained = [parameter for parameter in model.parameters() if parameter.requires_grad]
        optimizer = torch.optim.Adam(trained, lr=settings.lr, betas=(0.9, 0.99))
        n = len(images)
        steps = max(1, n // settings.batch_size)
        start = time.perf_counter()
        losses = []
        model.train()
        bar = tqdm(
            total=settings.epochs * steps,
            desc=f"subspace d={self.dim} rate={run.rate:.4g} seed={run.seed}",
            unit="batch",
            disable=not context.options.progress,
            leave=False,
        )
        for epoch in range(1, settings.epochs + 1):
            total = torch.zeros((), device=device)
            for batch in torch.tensor_split(_epoch_order(run.seed, epoch, n).to(device), steps):
                loss = F.cross_entropy(model(images[batch, None].float().div_(255)), labels[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.detach() * len(batch)
                bar.update()
            losses.append(total.item() / n)
        bar.close()
        seconds = time.perf_counter() - start
        table = fit_table(
            predictions=predict(model, images).cpu().numpy(),
            assigned=prepared.assigned_labels,
            true=prepared.true_labels,
            mislabelled=prepared.mislabelled,
            test=predict(model, test_images).cpu().numpy(),
            test_labels=splits.test_labels.cpu().numpy()[prepared.test_index],
        )
        table.insert(0, "dim", self.dim)
        table.insert(1, "projection", projection)
        path = context.folder / "subspace.csv"
        write_csv(with_keys(run.keys(), table), path)
        fraction = dict(zip(table["group"], table["fit"] / table["n"].replace(0, np.nan), strict=True))
        log.info(
            "subspace %s d=%d (%s): clean fit %.4f, mislabelled fit %.4f, test acc %.4f, %.0f s",
            run.run_id(),
            self.dim,
            projection,
            fraction["clean"],
            fraction["mislabelled"],
            fraction["test"],
            seconds,
        )
        return {
            **self.identity(),
            "projection_used": projection,
            "n_parameters": n_parameters,
            "epoch_losses": losses,
            "seconds": seconds,
            **file_record([path]),
        }
