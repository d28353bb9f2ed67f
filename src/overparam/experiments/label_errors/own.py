"""`overparam label-errors`: the data set's own label errors. The study's models are trained on the
unmodified training images (rate 0), every image is scored, and the suspects are written for a person to
judge: OUT/suspects.csv (ranked), OUT/suspects.html (the top suspects' images with their labels) and
OUT/label_errors.json (how many labels are estimated wrong, with an interval and the method named).

Ranking. Each measurement's suspicion becomes a percentile rank within its run (1 = most suspicious of the
run's images); an image's consensus is the mean of its percentiles over the measurements, then over the seeds
whose subsets hold it. The suggested label is cleanlab's out-of-sample argmax (the most frequent over seeds).
"""

import base64
import html
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy.stats import t as student_t

from overparam.config import StudyConfig
from overparam.data import load_split, resolve_data_dir
from overparam.experiments.label_errors.scores import LabelScores, measurements_of, suspicion
from overparam.figures import save
from overparam.store.files import read_json, resolve_store, write_csv, write_json, write_text


def suspects(scores: pd.DataFrame) -> pd.DataFrame:
    """label_scores.csv rows of rate-0 runs -> one row per training image (original index): given label,
    suggested label, seeds that scored it, consensus (mean percentile of suspicion, 1 = most suspicious),
    the fraction of those seeds in which cleanlab flagged it, and each measurement's mean over seeds;
    most suspicious first."""
    measured = measurements_of(scores)
    runs = []
    for _, run in scores.groupby("seed", sort=True):
        percentiles = pd.DataFrame(
            {name: pd.Series(suspicion(run, name), index=run.index).rank(pct=True) for name in measured}
        )
        runs.append(run.assign(consensus=percentiles.mean(axis=1)))
    scored = pd.concat(runs)
    columns: dict[str, Any] = {
        "given_label": ("assigned_label", "first"),
        "seeds": ("seed", "nunique"),
        "consensus": ("consensus", "mean"),
    }
    if "suggested_label" in scored:
        columns["suggested_label"] = ("suggested_label", lambda labels: labels.mode().iloc[0])
        columns["cleanlab_flagged"] = ("cleanlab_issue", "mean")
    columns |= {name: (name, "mean") for name in measured}
    table = scored.groupby("index").agg(**columns).reset_index()
    return table.sort_values(["consensus", "index"], ascending=[False, True], ignore_index=True)


def wrong_fraction(records: list[dict[str, Any]]) -> dict[str, Any]:
    """cleanlab's estimate of the fraction of wrong labels (`count.num_label_issues` over the images of a
    run, from its estimate of the joint of given and true labels), per seed, and its mean over seeds with a
    95 % t interval (seeds are the replicates; one seed: no interval)."""
    fractions = np.array([r["estimated_label_issues"] / r["images"] for r in records])
    k = len(fractions)
    half = student_t.ppf(0.975, k - 1) * fractions.std(ddof=1) / np.sqrt(k) if k > 1 else float("nan")
    return {
        "method": "cleanlab.count.num_label_issues on K-fold out-of-sample probabilities (confident "
        "learning)",
        "per_seed": fractions.tolist(),
        "mean": float(fractions.mean()),
        "low": float(fractions.mean() - half),
        "high": float(fractions.mean() + half),
        "seeds": k,
    }


def agreement(scores: pd.DataFrame) -> list[dict[str, Any]]:
    """Per seed and measurement: of the images cleanlab flags (n of them), the fraction that are also among
    the n most suspicious by that measurement."""
    rows = []
    for seed, run in scores.groupby("seed", sort=True):
        flagged = run["cleanlab_issue"].to_numpy(dtype=bool)
        n = int(flagged.sum())
        for name in measurements_of(run):
            if name == "cleanlab_quality" or n == 0:
                continue
            top = np.argsort(-suspicion(run, name), kind="stable")[:n]
            rows.append(
                {"seed": int(seed), "measurement": name, "flagged": n, "overlap": float(flagged[top].mean())}
            )
    return rows


def write_suspects(out: Path, config: StudyConfig, *, top: int = 64) -> dict[str, Any]:
    """Write OUT/suspects.csv, suspects.html and label_errors.json from a finished rate-0 study; returns the
    summary written to label_errors.json."""
    scores = pd.read_csv(out / "label_scores.csv")
    table = suspects(scores)
    write_csv(table, out / "suspects.csv")
    summary: dict[str, Any] = {
        "dataset": config.dataset,
        "images_scored": len(table),
        "scores": config.label_scores,
    }
    if "cleanlab" in config.label_scores:
        store = resolve_store(config.store)
        records = [read_json(LabelScores(run).record(store))["cleanlab"] for run in config.runs()]
        summary["wrong_fraction"] = wrong_fraction(records)
        summary["agreement_with_cleanlab"] = agreement(scores)
    write_json(summary, out / "label_errors.json")
    _write_page(out, table.head(top), config, summary)
    return summary


def _write_page(out: Path, shown: pd.DataFrame, config: StudyConfig, summary: dict[str, Any]) -> None:
    images, _ = load_split(
        dataset=config.dataset, split="train", data_dir=resolve_data_dir(config.data_dir), download=False
    )
    columns = 8
    rows = max(1, -(-len(shown) // columns))
    figure = Figure(figsize=(columns * 1.4, rows * 1.6), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for axis, row in zip(axes.ravel(), shown.itertuples(index=False), strict=False):
        axis.imshow(images[int(row.index)].numpy(), cmap="gray_r")
        suggested = f" -> {int(row.suggested_label)}" if hasattr(row, "suggested_label") else ""
        axis.set_title(f"#{int(row.index)}: {int(row.given_label)}{suggested}", fontsize=7)
    picture = save(figure, folder=out, name="suspects").read_bytes()
    estimate = summary.get("wrong_fraction")
    said = (
        f"<p>Estimated wrong labels: {estimate['mean']:.2%} (95 % interval over {estimate['seeds']} seeds "
        f"{estimate['low']:.2%} to {estimate['high']:.2%}); method: {html.escape(estimate['method'])}.</p>"
        if estimate
        else ""
    )
    page = (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>label-error suspects: "
        f"{html.escape(config.dataset)}</title></head><body><h1>The {len(shown)} most suspicious training "
        f"labels of {html.escape(config.dataset)}</h1>{said}<p>Each image: its index in the training split, "
        "its given label and (after the arrow) the label the out-of-sample models suggest. Ranked by the "
        "consensus of every score (suspects.csv). Look, and judge.</p>"
        f"<img alt='top suspects' src='data:image/png;base64,{base64.b64encode(picture).decode()}'>"
        "</body></html>\n"
    )
    write_text(page, out / "suspects.html")
