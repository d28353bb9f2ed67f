"""`overparam label-errors`: the data set's own label errors in every image of the chosen splits.

Per seed (the replicates), out-of-sample probabilities of every training image (K-fold) and every test
image (the fold models fine-tuned by cross-fitting over the test split), as steps of the run store
(crossfit.py); confident learning on each split (issues.py). Writes OUT/suspects.csv (one row per image and
split: given and suggested label, the fraction of seeds flagging it, every score and its rank),
OUT/suspects.html (each image flagged in at least half the seeds, per split, with its labels and ranks),
OUT/label_errors.json (per split: flagged counts, cleanlab's estimate of the wrong fraction with a t
interval over seeds, the fold models' test accuracy, how many of the errors a person listed were flagged)
and, for MNIST, OUT/known_errors.csv (those listed errors one by one, known.py).
"""

import base64
import html
import logging
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from overparam.config import ConfigError, StudyConfig
from overparam.data import load_split, resolve_data_dir
from overparam.experiments.label_errors.crossfit import (
    MODELS_OF_SPLIT,
    FoldModel,
    TestFold,
    test_split,
    train_split,
    whole,
)
from overparam.experiments.label_errors.issues import (
    SCORES,
    interval_text,
    seed_table,
    split_table,
    t_interval,
)
from overparam.experiments.label_errors.known import known_errors
from overparam.figures import save
from overparam.runtime import environment, select_device
from overparam.store.executors import ExecutorOptions, execute_steps
from overparam.store.files import write_csv, write_json, write_text
from overparam.study import RunsFailedError, run_options

log = logging.getLogger(__name__)
SPLITS = ("train", "test", "both")
METHOD = (
    "confident learning (cleanlab) on out-of-sample probabilities: flagged = the uncalibrated confident "
    "joint pruned by class (Northcutt, Athalye and Mueller 2021, MNIST test set); estimate = "
    "cleanlab.count.num_label_issues"
)


def splits_of(split: str) -> tuple[str, ...]:
    if split not in SPLITS:
        raise ConfigError(f"--split takes train, test or both, got {split!r}")
    return ("train", "test") if split == "both" else (split,)


def check_tuning(epochs: int, lr: float) -> None:
    if epochs < 0 or not lr > 0:
        raise ConfigError(
            f"--finetune-epochs must be 0 or more and --finetune-lr positive, got {epochs} and {lr}"
        )


def steps_for(config: StudyConfig, splits: tuple[str, ...], *, epochs: int, lr: float) -> list[Any]:
    """The steps every seed needs: for the training split its K fold models, for the test split the
    whole-split model and its K test folds."""
    steps: list[Any] = []
    for run in config.runs():
        if "train" in splits:
            steps += [FoldModel(run, part) for part in range(run.folds)]
        if "test" in splits:
            steps.append(FoldModel(run, whole(run)))
            steps += [TestFold(run, part, epochs, lr) for part in range(run.folds)]
    return steps


def find_label_errors(
    config: StudyConfig,
    *,
    out: Path,
    split: str,
    epochs: int,
    lr: float,
    jobs: int = 1,
    progress: bool = False,
    top: int = 400,
) -> dict[str, Any]:
    """Compute what is missing, then write suspects.csv, suspects.html and label_errors.json into `out`;
    returns the summary (label_errors.json)."""
    chosen = splits_of(split)
    check_tuning(epochs, lr)
    options = run_options(config, progress=progress)
    outcomes = execute_steps(
        steps_for(config, chosen, epochs=epochs, lr=lr), options, ExecutorOptions(jobs=jobs)
    )
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        listed = "; ".join(f"{o.step_id}: {o.error}" for o in failed)
        raise RunsFailedError(f"{len(failed)} steps failed ({listed}); run again to retry them")
    store = Path(options.store)
    summary: dict[str, Any] = {
        "dataset": config.dataset,
        "method": METHOD,
        "settings": asdict(config) | {"finetune_epochs": epochs, "finetune_lr": lr},
        "command": sys.argv,
        "environment": environment(select_device(config.device)),
        "splits": {},
    }
    tables = []
    for name in chosen:
        frames, records = [], []
        for run in config.runs():
            found = (
                train_split(run, store) if name == "train" else test_split(run, store, epochs=epochs, lr=lr)
            )
            frame, counts = seed_table(found.given, found.index, found.probabilities, found.aum)
            frames.append(frame)
            records.append({"seed": run.seed, "images": len(frame), **counts, **found.record})
        table = split_table(frames)
        tables.append(table.assign(split=name))
        images = records[0]["images"]
        summary["splits"][name] = {
            "images": images,
            "per_seed": records,
            "flagged": t_interval([r["n_flagged"] for r in records]),
            "cleanlab_issues": t_interval([r["n_issues"] for r in records]),
            "estimated": t_interval([r["estimated"] for r in records]),
            "wrong_fraction": t_interval([r["estimated"] / r["images"] for r in records]),
            "model_test_acc": t_interval([r["model_test_acc"] for r in records]),
            "out_of_sample_acc": t_interval([r["out_of_sample_acc"] for r in records]),
            "flagged_in_most_seeds": int((table["flagged_fraction"] >= 0.5).sum()),
        }
    suspects = pd.concat(tables, ignore_index=True)
    suspects = suspects[["split", *[c for c in suspects.columns if c != "split"]]]
    write_csv(suspects, out / "suspects.csv")
    known, summary["known_errors"] = known_errors(suspects, dataset=config.dataset)
    if summary["known_errors"]:
        write_csv(known, out / "known_errors.csv")
    write_json(summary, out / "label_errors.json")
    write_page(out, suspects, config, summary, top=top)
    return summary


def _grid(images: np.ndarray, shown: pd.DataFrame, out: Path, name: str) -> str:
    columns = 10
    rows = max(1, -(-len(shown) // columns))
    figure = Figure(figsize=(columns * 1.3, rows * 1.5), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for axis, row in zip(axes.ravel(), shown.itertuples(index=False), strict=False):
        axis.imshow(images[int(row.index)], cmap="gray_r")
        axis.set_title(f"#{int(row.index)}: {int(row.given_label)} -> {int(row.suggested_label)}", fontsize=7)
    return base64.b64encode(save(figure, folder=out, name=name).read_bytes()).decode()


def write_page(
    out: Path, suspects: pd.DataFrame, config: StudyConfig, summary: dict[str, Any], *, top: int
) -> None:
    """suspects.html: per split, the estimate, and every image flagged in at least half the seeds (up to
    `top`, by mean margin) with its given and suggested label and every score's rank."""
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>label errors: "
        f"{html.escape(config.dataset)}</title><style>td,th{{padding:2px 8px;text-align:right}}</style>"
        f"</head><body><h1>Label errors of {html.escape(config.dataset)}</h1>"
        f"<p>Method: {html.escape(METHOD)}. Each image: its index in the split, its given label and "
        "(after the arrow) the label the out-of-sample models suggest (argmax of their probabilities "
        "averaged over seeds). Ranks are within the split, 1 = most suspicious. Look, and judge.</p>"
    ]
    for name, found in summary["splits"].items():
        rows = suspects[(suspects["split"] == name) & (suspects["flagged_fraction"] >= 0.5)]
        shown = rows.head(top)
        flagged = interval_text(found["flagged"], ".1f")
        estimate = interval_text(found["wrong_fraction"], ".3%")
        parts.append(
            f"<h2>{name} split ({found['images']} images)</h2><p>Flagged per seed: {flagged}; "
            f"{len(rows)} images flagged in at least half the seeds. Estimated wrong labels: {estimate}. "
            f"Test accuracy of the {MODELS_OF_SPLIT[name]} {found['model_test_acc']['mean']:.4f}; "
            f"out-of-sample accuracy on this split {found['out_of_sample_acc']['mean']:.4f}.</p>"
        )
        if len(rows) > len(shown):
            parts.append(f"<p>The first {len(shown)} of {len(rows)} by margin (--top).</p>")
        if shown.empty:
            continue
        images, _ = load_split(
            dataset=config.dataset, split=name, data_dir=resolve_data_dir(config.data_dir), download=False
        )
        picture = _grid(images.numpy(), shown, out, f"suspects-{name}")
        parts.append(f"<img alt='flagged {name} images' src='data:image/png;base64,{picture}'>")
        columns = ["index", "given_label", "suggested_label", "flagged_fraction", "issue_fraction"]
        columns += [
            f"rank_{score}" for score in SCORES if score not in ("flagged_fraction", "issue_fraction")
        ]
        parts.append(shown[columns].to_html(index=False, float_format=lambda v: f"{v:.3g}", na_rep="-"))
    parts.append("</body></html>\n")
    write_text("".join(parts), out / "suspects.html")
