"""The memorisation experiment's analysis tables, from the tables its command wrote into OUT (not the store):
memorisation_images.csv (each image's estimate and counts), label_scores.csv (the probe's and the training's
scores), memorisation_models.csv (each subset model's fit) and memorisation_removal.csv (the retrainings).
Seeds are the replicates: every interval is a t interval over seeds of a per-run value."""

from pathlib import Path

import numpy as np
import pandas as pd

from overparam.experiments.memorisation.estimate import (
    THRESHOLDS,
    correlations,
    over_seeds,
    removal_differences,
    tail,
)

RUN = ["dataset", "model", "width", "train_size", "rate", "seed"]


def memorisation_tables(out: Path) -> dict[str, pd.DataFrame]:
    """Every analysis table (OUT/analysis/<name>.csv) of a study the memorisation command wrote; {} for any
    other study."""
    images_path = Path(out) / "memorisation_images.csv"
    if not images_path.exists():
        return {}
    images = pd.read_csv(images_path)
    tables: dict[str, pd.DataFrame] = {}
    models_path = Path(out) / "memorisation_models.csv"
    if models_path.exists():
        models = pd.read_csv(models_path)
        tables["memorisation_fit"] = models.groupby(RUN, as_index=False).agg(
            models=("part", "size"),
            reached_target=("reached_target", "mean"),
            train_acc_min=("train_acc", "min"),
            train_acc_mean=("train_acc", "mean"),
            test_acc_mean=("test_acc", "mean"),
            seconds=("seconds", "sum"),
        )
    groups = images.assign(group=np.where(images["mislabelled"], "mislabelled", "clean"))
    tables["memorisation_se"] = groups.groupby([*RUN, "group"], as_index=False).agg(
        images=("memorisation", "size"),
        models=("models", "first"),
        n_in_median=("n_in", "median"),
        n_out_median=("n_out", "median"),
        se_median=("se", "median"),
        se_mean=("se", "mean"),
        se_max=("se", "max"),
        se_adjusted_median=("se_adjusted", "median"),
        se_adjusted_max=("se_adjusted", "max"),
    )
    distribution = tail(images, RUN)
    tables["memorisation_tail"] = distribution
    statistics = ["mean", "q50", "q90", "q99", *[f"above_{t:g}" for t in THRESHOLDS]]
    long = distribution.melt(id_vars=[*RUN, "group"], value_vars=statistics, var_name="statistic")
    tables["memorisation_tail_by_rate"] = over_seeds(long, ["rate", "group", "statistic"], "value")
    scores_path = Path(out) / "label_scores.csv"
    if scores_path.exists():
        scores = pd.read_csv(scores_path).drop(columns=["memorisation"], errors="ignore")
        joined = scores.merge(images[[*RUN, "index", "memorisation"]], on=[*RUN, "index"], how="inner")
        per_run = correlations(joined, RUN)
        tables["memorisation_correlations"] = per_run
        tables["memorisation_correlation_by_rate"] = over_seeds(
            per_run, ["rate", "group", "score"], "spearman"
        )
    removal_path = Path(out) / "memorisation_removal.csv"
    if removal_path.exists():
        removal = pd.read_csv(removal_path)
        if set(removal["removed"]) >= {"top", "random"}:
            paired = removal_differences(removal, RUN).dropna(subset=["difference"])
            per_seed = paired.groupby([*RUN, "k"], as_index=False)[
                ["test_acc_top", "test_acc_random", "difference"]
            ].mean()
            tables["memorisation_removal"] = per_seed
            tables["memorisation_removal_effect"] = over_seeds(per_seed, ["rate", "k"], "difference")
    return tables


def strength(rho: float) -> str:
    """A word for |rho| (Cohen's conventions for a correlation)."""
    size = abs(rho)
    return (
        "strongly"
        if size >= 0.5
        else "moderately"
        if size >= 0.3
        else "weakly"
        if size >= 0.1
        else "negligibly"
    )


def verdict(tables: dict[str, pd.DataFrame]) -> list[str]:
    """Sentences answering "does perturbation sensitivity measure memorisation?", one per rate, from
    memorisation_correlation_by_rate.csv (clean images: the question is about images whose label is right)."""
    table = tables.get("memorisation_correlation_by_rate")
    if table is None or not len(table):
        return []
    said = []
    for rate, part in table[table["group"] == "clean"].groupby("rate"):
        probes = part[part["score"].str.endswith("_flip_level")].dropna(subset=["mean"])
        if not len(probes):
            continue
        best = probes.loc[probes["mean"].abs().idxmax()]
        shown = "; ".join(
            f"{row.score.removesuffix('_flip_level')} {row.mean:.2f}"
            + ("" if np.isnan(row.low) else f" [{row.low:.2f}, {row.high:.2f}]")
            for row in probes.itertuples()
        )
        detectable = probes["detectable"].max()
        certain = all(row.low > 0 or row.high < 0 for row in probes.itertuples() if not np.isnan(row.low))
        clause = (
            "every interval excludes 0"
            if certain and not probes["low"].isna().all()
            else "not every interval excludes 0"
        )
        said.append(
            f"Rate {rate:.3g}, clean images: perturbation sensitivity tracks memorisation "
            f"{strength(best['mean'])} (Spearman, mean over {int(best['seeds'])} seeds [95 % t interval]: "
            f"{shown}; {clause}); the seeds "
            f"could have detected a mean correlation of {detectable:.2f} (80 % power)."
            if not np.isnan(detectable)
            else f"Rate {rate:.3g}, clean images: Spearman {shown} within one seed: no interval."
        )
    return said
