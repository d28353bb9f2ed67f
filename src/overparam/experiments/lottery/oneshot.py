"""One-shot pruning of the over-trained model without retraining: which images lose their fit first as the
smallest-magnitude weights are removed (`masks.magnitude_mask` from the dense model at each fraction; batch
norm statistics as trained). A step of the run store that needs only the run's training.

`pruning.csv` has one row per fraction and group (mislabelled and clean training images on their assigned
labels, test images on their true labels): the nominal fraction pruned, the fraction of prunable weights
actually remaining (the output layer goes at half the rate), images, and how many the pruned model gets
right."""

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

import pandas as pd
import torch

from overparam.config import RunConfig
from overparam.execution import TrainStep
from overparam.experiments.lottery.masks import apply_mask, magnitude_mask, remaining
from overparam.models import predict
from overparam.runs import prepared_run, trained_model
from overparam.store.files import file_record, with_keys, write_csv
from overparam.store.steps import Step, StepContext, content_id


@dataclass(frozen=True)
class OneShotPruning(Step):
    run: RunConfig
    kind = "oneshot-pruning"
    tables: ClassVar[dict[str, str]] = {"pruning": "pruning.csv"}

    def needs(self) -> tuple[Step, ...]:
        return (TrainStep(self.run),)

    def step_id(self) -> str:
        settings = {"fractions": list(self.run.oneshot_pruning)}
        return f"{self.run.run_id()}/{content_id(self.kind, settings, self.needs())}"

    def compute(self, context: StepContext) -> dict[str, Any]:
        run, device = self.run, context.device
        prepared, splits = prepared_run(run, context)
        dense = trained_model(run, prepared.paths, device)
        images = splits.train_images[torch.as_tensor(prepared.train_index, device=device)]
        test = torch.as_tensor(prepared.test_index, device=device)
        assigned = prepared.assigned_labels
        test_labels = splits.test_labels[test].cpu().numpy()
        groups = {"mislabelled": prepared.mislabelled, "clean": ~prepared.mislabelled}
        rows = []
        for fraction in run.oneshot_pruning:
            model = copy.deepcopy(dense)
            mask = magnitude_mask(model, fraction=fraction)
            apply_mask(model, mask)
            correct = predict(model, images, precision=run.precision).cpu().numpy() == assigned
            tested = predict(model, splits.test_images[test], precision=run.precision).cpu().numpy()
            found = {
                group: (int(members.sum()), int(correct[members].sum())) for group, members in groups.items()
            }
            found["test"] = (len(test_labels), int((tested == test_labels).sum()))
            for group, (n, right) in found.items():
                rows.append(
                    {
                        "fraction_pruned": fraction,
                        "remaining": remaining(mask),
                        "group": group,
                        "n": n,
                        "correct": right,
                    }
                )
        path = context.folder / "pruning.csv"
        write_csv(with_keys(run.keys(), pd.DataFrame(rows)), path)
        return {"run_id": run.run_id(), "fractions": list(run.oneshot_pruning), **file_record([path])}
