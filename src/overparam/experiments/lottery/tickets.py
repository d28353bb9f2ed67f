"""Lottery tickets, each a training step of the run store (Frankle and Carbin 2019; Frankle et al. 2020's
rewinding; open_lth's implementation is the reference), asked what the paper asks: how sparse can the
network be and still store the mislabels?

Round r of iterative magnitude pruning (IMP) prunes `lottery_fraction` of the weights round r - 1 kept
(round 0 is the run's over-trained dense model) by global magnitude of round r - 1's trained weights
(`masks.magnitude_mask`), rewinds the survivors to the dense training's weights at iteration k
(`RewindPoint`) and trains them again with the dense run's schedule, data order and optimizer from iteration
k on (a fresh optimizer, as open_lth). Beside every IMP ticket, at the same sparsity:
- reinit: its mask, a fresh random initialisation, trained from iteration k (open_lth's
  randomly_reinitialize);
- random: a random mask with its number of weights in every layer, the rewound weights, trained from k
  (open_lth's randomly_prune, "layerwise");
- dual: the dual lottery ticket (Bai et al. 2022): a random mask keeping the same fraction of every layer,
  the run's initial weights; the dense network is trained while an L2 penalty on the weights outside the
  mask grows (`GrowingPenalty`: extrusion, on its own one-cycle schedule), then cut to the mask and trained
  with the run's schedule.

A ticket is a training: its folder holds what a run's does (model.pt, metrics.csv, final_predictions.npz,
training.json) and its mask.pt, so the run's probe measures it like a dense model (`TicketProbe`), and its
ticket.csv has the fit of each group.
"""

import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from overparam.config import RunConfig
from overparam.execution import TrainStep, probe_run
from overparam.experiments.lottery.masks import (
    Mask,
    apply_mask,
    full_mask,
    imp_remaining,
    layerwise_random_mask,
    magnitude_mask,
    remaining,
    uniform_random_mask,
)
from overparam.experiments.lottery.training import GrowingPenalty, KeepMask
from overparam.mislabel import keyed_generator
from overparam.runs import PreparedRun, new_model, prepared_run, training_data
from overparam.store.files import (
    RunPaths,
    file_record,
    load_checked,
    save_checked,
    with_keys,
    write_csv,
    write_npz,
)
from overparam.store.steps import Step, StepContext, content_id
from overparam.train import TrainingData, steps_per_epoch, train


def rewind_iterations(run: RunConfig) -> int:
    """The iteration the survivors are rewound to: `lottery_rewind` epochs, rounded."""
    return round(run.lottery_rewind * steps_per_epoch(run, run.train_size))


def _torch_generator(*key: Any) -> torch.Generator:
    return torch.Generator().manual_seed(int(keyed_generator(*key).integers(2**62)))


@dataclass(frozen=True)
class RewindPoint(Step):
    """The dense training's weights at iteration `rewind_iterations`: its first iterations trained again
    from the run's initialisation, with its schedule and data order (the same arithmetic, so the same
    weights, tests/test_tickets.py)."""

    run: RunConfig
    kind = "rewind"

    def step_id(self) -> str:
        settings = {"iterations": rewind_iterations(self.run)}
        return f"{self.run.run_id()}/{content_id(self.kind, settings)}"

    def compute(self, context: StepContext) -> dict[str, Any]:
        prepared, splits = prepared_run(self.run, context)
        model = new_model(self.run).to(context.device)
        iterations = rewind_iterations(self.run)
        if iterations:
            train(
                model=model,
                data=training_data(prepared, splits),
                run=self.run,
                stop=iterations,
                progress=False,
            )
        path = context.folder / "weights.pt"
        save_checked(model.state_dict(), path)
        return {"run_id": self.run.run_id(), "iterations": iterations, **file_record([path])}


@dataclass(frozen=True)
class Ticket(Step):
    """The sparse network of one method at one round of one run (see the module)."""

    run: RunConfig
    method: str  # settings.LOTTERY_METHODS
    round: int  # >= 1
    kind = "ticket"
    record_name = "training.json"  # a ticket is a training: the probe reads it as a run's
    lock_name = "run.lock"
    tables: ClassVar[dict[str, str]] = {"tickets": "ticket.csv"}

    def settings(self) -> dict[str, Any]:
        run = self.run
        settings: dict[str, Any] = {"fraction": run.lottery_fraction}
        if self.method == "reinit":
            settings["start"] = rewind_iterations(run)
        if self.method == "dual":
            settings |= {"increment": run.dual_increment, "interval": run.dual_interval}
            settings["ceiling"] = run.dual_ceiling
        return settings

    def needs(self) -> tuple[Step, ...]:
        run = self.run
        if self.method == "imp":
            source = TrainStep(run) if self.round == 1 else Ticket(run, "imp", self.round - 1)
            return (source, RewindPoint(run))
        if self.method == "random":
            return (Ticket(run, "imp", self.round), RewindPoint(run))
        if self.method == "reinit":
            return (Ticket(run, "imp", self.round),)
        return ()

    def step_id(self) -> str:
        name = f"{self.kind}-{self.method}-{self.round}"
        return f"{self.run.run_id()}/{content_id(name, self.settings(), self.needs())}"

    def nominal_remaining(self) -> float:
        """The fraction of prunable weights IMP keeps at this round, the sparsity every method is shown at."""
        with torch.random.fork_rng(devices=[]):  # building the model seeds PyTorch's generator
            model = new_model(self.run)
        return imp_remaining(model, fraction=self.run.lottery_fraction, rounds=self.round)

    def columns(self) -> dict[str, Any]:
        """What identifies the ticket in a table, after the run's keys."""
        return {"method": self.method, "round": self.round, "remaining": self.nominal_remaining()}

    def compute(self, context: StepContext) -> dict[str, Any]:
        run, folder = self.run, context.folder
        prepared, splits = prepared_run(run, context)
        data = training_data(prepared, splits)
        model, mask, start = self._starting_point(context, data)
        apply_mask(model, mask)
        result = train(
            model=model,
            data=data,
            run=run,
            checkpoint=folder / "checkpoint.pt",
            progress=context.options.progress,
            callbacks=(KeepMask(mask),),
            start=start,
        )
        paths = {
            name: folder / name for name in ("model.pt", "mask.pt", "metrics.csv", "final_predictions.npz")
        }
        save_checked(model.state_dict(), paths["model.pt"])
        save_checked({name: kept.cpu() for name, kept in mask.items()}, paths["mask.pt"])
        write_csv(with_keys(run.keys() | self.columns(), pd.DataFrame(result.metrics)), paths["metrics.csv"])
        predicted = {"train": result.final.train_predictions, "test": result.final.test_predictions}
        write_npz(
            paths["final_predictions.npz"],
            **{k: v.cpu().numpy().astype(np.uint8) for k, v in predicted.items()},
        )
        rows = fit_rows(prepared, predicted["train"].cpu().numpy(), predicted["test"].cpu().numpy(), data)
        last, target = result.metrics[-1], run.target_acc
        summary = {
            "kept": remaining(mask),
            "start_iteration": start,
            "epochs": last["epoch"],
            "reached_target": bool(last["train_acc"] >= target),
            "first_target_epoch": next(
                (r["epoch"] for r in result.metrics if r["train_acc"] >= target), None
            ),
            "train_seconds": sum(row["seconds"] for row in result.metrics),
        }
        table = with_keys(run.keys() | self.columns(), pd.DataFrame(rows).assign(**summary))
        write_csv(table, folder / "ticket.csv")
        return {
            "run_id": run.run_id(),
            "ticket": self.columns() | self.settings(),
            "result": summary | {"train_acc": last["train_acc"], "test_acc": last["test_acc"]},
            **file_record([*paths.values(), folder / "ticket.csv"]),
        }

    def _starting_point(self, context: StepContext, data: TrainingData) -> tuple[torch.nn.Module, Mask, int]:
        """The weights training starts from, the mask, and the iteration it starts at."""
        run, store, device = self.run, context.store, context.device
        model = new_model(run).to(device)
        rewind = rewind_iterations(run)
        key = (self.method, run.seed, self.round)

        def load(step: Step, name: str) -> Any:
            return load_checked(step.folder(store) / name, map_location=device)

        if self.method == "imp":
            source, point = self.needs()
            model.load_state_dict(load(source, "model.pt"))
            previous = full_mask(model) if self.round == 1 else load(source, "mask.pt")
            mask = magnitude_mask(model, fraction=run.lottery_fraction, mask=previous)
            model.load_state_dict(load(point, "weights.pt"))
            return model, mask, rewind
        if self.method == "reinit":
            seed = int(keyed_generator(*key).integers(2**31))
            return new_model(run, seed=seed).to(device), load(self.needs()[0], "mask.pt"), rewind
        if self.method == "random":
            ticket, point = self.needs()
            mask = layerwise_random_mask(load(ticket, "mask.pt"), generator=_torch_generator(*key))
            model.load_state_dict(load(point, "weights.pt"))
            return model, mask, rewind
        mask = uniform_random_mask(model, keep=self.nominal_remaining(), generator=_torch_generator(*key))
        extrude(model, data, mask, run=run, context=context)
        return model, mask, 0

    def tidy(self, folder: Path) -> None:
        for name in ("checkpoint.pt", "extrusion.pt"):
            (folder / name).unlink(missing_ok=True)


def extrude(
    model: torch.nn.Module, data: TrainingData, mask: Mask, *, run: RunConfig, context: StepContext
) -> None:
    """Train the dense `model` in place while the penalty on the weights outside `mask` grows to its ceiling
    (`GrowingPenalty`): Adam under a one-cycle schedule over the whole extrusion, with the run's data order
    and peak learning rate (resumable from its own checkpoint)."""
    penalty = GrowingPenalty(
        mask=mask, increment=run.dual_increment, interval=run.dual_interval, ceiling=run.dual_ceiling
    )
    per_epoch = steps_per_epoch(run, len(data.images))
    epochs = -(-penalty.iterations() // per_epoch)
    extrusion = replace(run, max_epochs=epochs, schedule="full")
    train(
        model=model,
        data=data,
        run=extrusion,
        checkpoint=context.folder / "extrusion.pt",
        progress=context.options.progress,
        callbacks=(penalty,),
        stop=penalty.iterations(),
    )


GROUPS = ("mislabelled", "mislabelled_true_label", "clean", "test")


def fit_rows(
    prepared: PreparedRun, train_predictions: np.ndarray, test_predictions: np.ndarray, data: TrainingData
) -> list[dict[str, Any]]:
    """Per group, images and how many are predicted right: mislabelled and clean training images on their
    assigned labels, the mislabelled on their true labels too (generalised instead of stored), the test
    images on their true labels. Predictions [N] and [M] int, in the run's data order."""
    mislabelled = prepared.mislabelled
    assigned, true = prepared.assigned_labels, prepared.true_labels
    test_labels = data.test_labels.cpu().numpy()
    right = {
        "mislabelled": (train_predictions == assigned)[mislabelled],
        "mislabelled_true_label": (train_predictions == true)[mislabelled],
        "clean": (train_predictions == assigned)[~mislabelled],
        "test": test_predictions == test_labels,
    }
    return [{"group": group, "n": len(right[group]), "correct": int(right[group].sum())} for group in GROUPS]


@dataclass(frozen=True)
class TicketProbe(Step):
    """A ticket's probe under one perturbation: the run's probe of the ticket's model, `<ticket>/<probe_id>`,
    its tables keyed by the ticket's columns besides the run's."""

    ticket: Ticket
    perturbation: str = "blur"
    kind = "ticket-probe"
    record_name = "probe.json"
    tables: ClassVar[dict[str, str]] = {"ticket_curves": "curves.csv"}

    def step_id(self) -> str:
        return f"{self.ticket.step_id()}/{self.ticket.run.probe_id(self.perturbation)}"

    def needs(self) -> tuple[Step, ...]:
        return (self.ticket,)

    def compute(self, context: StepContext) -> dict[str, Any]:
        run = self.ticket.run
        prepared, splits = prepared_run(run, context)
        paths = RunPaths(root=self.ticket.folder(context.store), probe_id=run.probe_id(self.perturbation))
        return probe_run(
            replace(prepared, paths=paths),
            splits,
            perturbation=self.perturbation,
            progress=context.options.progress,
            columns=self.ticket.columns(),
        )

    def tidy(self, folder: Path) -> None:
        shutil.rmtree(folder / "parts", ignore_errors=True)


def lottery_steps(run: RunConfig) -> list[Step]:
    """Every ticket of `run` (each method at each round) and its probe under each of the run's
    perturbations."""
    steps: list[Step] = []
    for number in range(1, run.lottery_rounds + 1):
        for method in run.lottery_methods:
            ticket = Ticket(run, method, number)
            steps += [ticket, *(TicketProbe(ticket, name) for name in run.perturbations)]
    return steps
