"""Per-image label-error scores of one run, a step of the run store (`LabelScores`): it needs the run's
training (its recorded dynamics), its probes, and, for the scores that ask for them, K-fold and random-subset
models (`subsets.py`). Scores that need only the trained model or its training record never trigger another
training.

`scores.csv` holds one row per training image of the run: its original index, true and assigned labels,
whether it was mislabelled, and each measurement in its own unit (`MEASUREMENTS`). `suspicion` turns them
into scores where higher means more likely mislabelled. `costs.csv` says what each score cost beyond the
trained model: trainings, probe passes (levels) and seconds (with the model's own training seconds beside).
"""

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from overparam.config import RunConfig
from overparam.execution import ProbeStep, TrainStep
from overparam.experiments.label_errors.dynamics import area_under_margin, forgetting_events
from overparam.runs import prepared_run
from overparam.store.files import file_record, read_json, read_verified, with_keys, write_csv
from overparam.store.steps import Step, StepContext, content_id
from overparam.subsets import SubsetTraining

# measurement -> (the score it belongs to, +1 when a larger value is more suspicious, else -1). Probe flip
# levels are "<perturbation>_flip_level" (added per perturbation).
MEASUREMENTS = {
    "margin_at_0": ("probe", -1),  # the trained model's p(assigned) - max other p, unperturbed
    "aum": ("dynamics", -1),  # area under the margin over training (logits)
    "forgetting": ("dynamics", 1),  # forgetting events during training (inf: never learnt)
    "cleanlab_quality": ("cleanlab", -1),  # cleanlab's label quality (self-confidence) out of sample
    "memorisation": ("memorisation", 1),  # P(correct | trained on it) - P(correct | not)
}


def measurement_direction(name: str) -> int:
    """+1 when a larger value of measurement `name` is more suspicious, -1 when a smaller one is."""
    return -1 if name.endswith("_flip_level") else MEASUREMENTS[name][1]


def suspicion(frame: pd.DataFrame, name: str) -> np.ndarray:
    """Measurement `name` of scores.csv rows as a score, higher = more likely mislabelled [N] float. A probe
    flip level that is NaN (never flipped on the grid) counts as beyond the grid: least suspicious."""
    values = frame[name].to_numpy(dtype=float)
    if name.endswith("_flip_level"):
        values = np.where(np.isnan(values), np.inf, values)
    return measurement_direction(name) * values


def measurements_of(frame: pd.DataFrame) -> list[str]:
    """The measurement columns of a scores table, in their order."""
    return [c for c in frame.columns if c in MEASUREMENTS or c.endswith("_flip_level")]


@dataclass(frozen=True)
class LabelScores(Step):
    """The label-error scores `run.label_scores` of one run (see the module)."""

    run: RunConfig
    kind = "label-scores"
    tables: ClassVar[dict[str, str]] = {"label_scores": "scores.csv", "label_costs": "costs.csv"}

    def folds(self) -> list[SubsetTraining]:
        k = self.run.folds
        return [SubsetTraining(self.run, "fold", part, k) for part in range(k)]

    def samples(self) -> list[SubsetTraining]:
        m, fraction = self.run.memorisation_models, self.run.memorisation_fraction
        return [SubsetTraining(self.run, "sample", part, m, fraction) for part in range(m)]

    def needs(self) -> tuple[Step, ...]:
        run, chosen = self.run, self.run.label_scores
        needed: list[Step] = [TrainStep(run)]
        if "probe" in chosen:
            needed += [ProbeStep(run, name) for name in run.perturbations]
        if "cleanlab" in chosen:
            needed += self.folds()
        if "memorisation" in chosen:
            needed += self.samples()
        return tuple(needed)

    def step_id(self) -> str:
        settings = {"scores": sorted(self.run.label_scores)}
        return f"{self.run.run_id()}/{content_id(self.kind, settings, self.needs())}"

    def compute(self, context: StepContext) -> dict[str, Any]:
        run, store = self.run, context.store
        prepared, _ = prepared_run(run, context)
        assigned = prepared.assigned_labels
        table = pd.DataFrame(
            {
                "index": prepared.train_index,
                "true_label": prepared.true_labels,
                "assigned_label": assigned,
                "mislabelled": prepared.mislabelled,
            }
        )
        costs: dict[str, dict[str, float]] = {}
        training = TrainStep(run).record(store)
        trained = read_json(training)
        train_seconds = trained["result"]["train_seconds"]
        if "dynamics" in run.label_scores:
            if "dynamics.npz" not in trained["files"]:
                raise RuntimeError(
                    f"{run.run_id()} was trained before overparam recorded training dynamics; remove its "
                    "folder from the store to train it again"
                )
            with np.load(io.BytesIO(read_verified(training, "dynamics.npz"))) as dynamics:
                table["aum"] = area_under_margin(dynamics["margins"])
                table["forgetting"] = forgetting_events(dynamics["predictions"] == assigned[None, :])
            costs["dynamics"] = {"trainings": 0, "probe_passes": 0, "seconds": 0.0}
        if "probe" in run.label_scores:
            costs["probe"] = self._probe_measurements(table, store, assigned)
        if "cleanlab" in run.label_scores:
            costs["cleanlab"], cleanlab_record = self._cleanlab(table, store, assigned)
        if "memorisation" in run.label_scores:
            costs["memorisation"] = self._memorisation(table, store, assigned)
        path, costs_path = context.folder / "scores.csv", context.folder / "costs.csv"
        write_csv(with_keys(run.keys(), table), path)
        cost_rows = [
            {"score": name, **cost, "model_training_seconds": train_seconds} for name, cost in costs.items()
        ]
        write_csv(with_keys(run.keys(), pd.DataFrame(cost_rows)), costs_path)
        return {
            "run_id": run.run_id(),
            "scores": list(run.label_scores),
            **({"cleanlab": cleanlab_record} if "cleanlab" in run.label_scores else {}),
            **file_record([path, costs_path]),
        }

    def _probe_measurements(self, table: pd.DataFrame, store: Any, assigned: np.ndarray) -> dict[str, float]:
        """Each perturbation's flip level per image (NaN for images the probe did not see), and the level-0
        margin of the trained model's probabilities; the probes' passes and seconds."""
        passes, seconds = 0, 0.0
        for name in self.run.perturbations:
            record = ProbeStep(self.run, name).record(store)
            flips = pd.read_csv(io.BytesIO(read_verified(record, "flips.csv")))
            train = flips[flips["split"] == "train"].set_index("index")
            table[f"{name}_flip_level"] = train["flip_level"].reindex(table["index"]).to_numpy()
            saved = read_json(record)
            passes, seconds = passes + len(saved["levels"]), seconds + saved["seconds"]
            if name == self.run.perturbations[0]:
                with np.load(io.BytesIO(read_verified(record, "predictions.npz"))) as predictions:
                    probabilities = predictions["train_probabilities"][0].astype(np.float32)
                    at = pd.Index(table["index"]).get_indexer(predictions["train_index"])
                margin = np.full(len(table), np.nan)
                margin[at] = _margin(probabilities, assigned[at])
                table["margin_at_0"] = margin
        return {"trainings": 0, "probe_passes": passes, "seconds": seconds}

    def _cleanlab(
        self, table: pd.DataFrame, store: Any, assigned: np.ndarray
    ) -> tuple[dict[str, float], dict[str, Any]]:
        """Confident learning (Northcutt et al. 2021) by cleanlab on the K-fold out-of-sample probabilities:
        its label quality per image, its label issues, and its estimate of how many labels are wrong."""
        from cleanlab.count import num_label_issues
        from cleanlab.filter import find_label_issues
        from cleanlab.rank import get_label_quality_scores

        probabilities, seconds = _held_out(self.folds(), store, len(table))
        table["suggested_label"] = probabilities.argmax(axis=1)
        table["cleanlab_quality"] = get_label_quality_scores(labels=assigned, pred_probs=probabilities)
        table["cleanlab_issue"] = find_label_issues(labels=assigned, pred_probs=probabilities)
        record = {
            "issues": int(table["cleanlab_issue"].sum()),
            "estimated_label_issues": int(num_label_issues(labels=assigned, pred_probs=probabilities)),
            "images": len(table),
            "folds": self.run.folds,
        }
        return {"trainings": self.run.folds, "probe_passes": 0, "seconds": seconds}, record

    def _memorisation(self, table: pd.DataFrame, store: Any, assigned: np.ndarray) -> dict[str, float]:
        """Feldman and Zhang (2020): P(model correct on the assigned label | the image was in its training
        subset) - P(correct | it was not), over the random-subset models; NaN where either side is empty."""
        inside, correct, seconds = [], [], 0.0
        for step in self.samples():
            record = step.record(store)
            with np.load(io.BytesIO(read_verified(record, "subset.npz"))) as saved:
                inside.append(saved["inside"])
                correct.append(saved["probabilities"].argmax(axis=1) == assigned)
            seconds += read_json(record)["seconds"]
        inside_all, correct_all = np.array(inside), np.array(correct)
        with np.errstate(invalid="ignore", divide="ignore"):
            seen = (correct_all & inside_all).sum(0) / inside_all.sum(0)
            unseen = (correct_all & ~inside_all).sum(0) / (~inside_all).sum(0)
        table["memorisation"] = seen - unseen
        return {"trainings": len(inside), "probe_passes": 0, "seconds": seconds}


def _margin(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """p(label) - the largest other p, per row of probabilities [N, C]."""
    assigned = probabilities[np.arange(len(labels)), labels]
    others = probabilities.copy()
    others[np.arange(len(labels)), labels] = -np.inf
    return assigned - others.max(axis=1)


def _held_out(folds: Sequence[SubsetTraining], store: Any, n: int) -> tuple[np.ndarray, float]:
    """Each image's probabilities [N, C] float32 from the fold model that did not train on it (rows
    renormalised: they were stored as float16), and the folds' training seconds."""
    found, seconds = None, 0.0
    for step in folds:
        record = step.record(store)
        with np.load(io.BytesIO(read_verified(record, "subset.npz"))) as saved:
            probabilities = saved["probabilities"].astype(np.float32)
            held_out = ~saved["inside"]
        if found is None:
            found = np.full((n, probabilities.shape[1]), np.nan, dtype=np.float32)
        found[held_out] = probabilities[held_out]
        seconds += read_json(record)["seconds"]
    assert found is not None and not np.isnan(found).any(), "the folds cover every image once"
    return found / found.sum(axis=1, keepdims=True), seconds
