"""How well each label-error score finds the injected mislabels: per run (AUROC and average precision with
bootstrap intervals over the run's images, precision and recall at k = the number of injected mislabels),
and per rate over seeds (the replicates: mean and t interval), beside what each score cost."""

from pathlib import Path

import numpy as np
import pandas as pd

from overparam.experiments.label_errors.judge import bootstrap_detection, detection
from overparam.experiments.label_errors.scores import MEASUREMENTS, measurements_of, suspicion
from overparam.results import KEYS
from overparam.stats import seed_mean


def score_of(measurement: str) -> str:
    """The score (what was computed, and paid for, together) that a measurement belongs to."""
    return "probe" if measurement.endswith("_flip_level") else MEASUREMENTS[measurement][0]


def detection_by_run(scores: pd.DataFrame, *, n_bootstrap: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per run with injected mislabels x measurement of label_scores.csv: images scored (a probe
    of a clean sample scores the sample), auroc, average_precision with 95 % bootstrap bounds within the run
    (`judge.bootstrap_detection`), precision_at_k, recall_at_k, k."""
    rows = []
    keys = [key for key in KEYS if key in scores]
    for values, run in scores[scores["rate"] > 0].groupby(keys, sort=False):
        for name in measurements_of(run):
            scored = run[run[name].notna()]
            mislabelled = scored["mislabelled"].to_numpy(dtype=bool)
            if mislabelled.all() or not mislabelled.any():
                continue
            score = suspicion(scored, name)
            found = detection(score=score, mislabelled=mislabelled)
            bounds = bootstrap_detection(
                score=score, mislabelled=mislabelled, n_resamples=n_bootstrap, seed=seed
            )
            rows.append(
                {
                    **dict(zip(keys, values, strict=True)),
                    "score": score_of(name),
                    "measurement": name,
                    "images_scored": len(scored),
                    **found,
                    "auroc_low": bounds["auroc"][0],
                    "auroc_high": bounds["auroc"][1],
                    "average_precision_low": bounds["average_precision"][0],
                    "average_precision_high": bounds["average_precision"][1],
                }
            )
    return pd.DataFrame(rows)


def detection_by_rate(by_run: pd.DataFrame, costs: pd.DataFrame) -> pd.DataFrame:
    """Per variant, family, rate and measurement: seeds, and over them the mean of auroc, average_precision
    and precision_at_k with a 95 % t interval clipped to [0, 1] (seeds are the replicates; one seed: no
    interval), and the mean cost of its score per run (trainings beyond the model, probe passes, seconds on
    the machine it ran on)."""
    if by_run.empty:
        return by_run
    keys = [key for key in KEYS if key in by_run and key != "seed"]
    groups = by_run.groupby([*keys, "score", "measurement"], sort=False)
    table = groups.agg(seeds=("seed", "nunique")).reset_index()
    for metric in ("auroc", "average_precision", "precision_at_k"):
        mean, half = seed_mean(groups, metric)
        table[metric] = mean
        table[f"{metric}_low"] = np.clip(mean - half, 0, 1)
        table[f"{metric}_high"] = np.clip(mean + half, 0, 1)
    cost_keys = [key for key in keys if key in costs]
    paid = costs.groupby([*cost_keys, "score"], as_index=False)[
        ["trainings", "probe_passes", "seconds"]
    ].mean()
    return table.merge(paid, on=[*cost_keys, "score"], how="left")


def label_error_tables(out: Path, *, n_bootstrap: int = 1000, seed: int = 0) -> dict[str, pd.DataFrame]:
    """{"label_detection": per run, "label_detection_by_rate": per rate} from OUT/label_scores.csv and
    label_costs.csv; {} for a study without label-error scores or without injected mislabels to find."""
    if not (out / "label_scores.csv").exists():
        return {}
    scores, costs = pd.read_csv(out / "label_scores.csv"), pd.read_csv(out / "label_costs.csv")
    by_run = detection_by_run(scores, n_bootstrap=n_bootstrap, seed=seed)
    if by_run.empty:
        return {}
    return {"label_detection": by_run, "label_detection_by_rate": detection_by_rate(by_run, costs)}
