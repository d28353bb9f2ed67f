"""The experiment's analysis tables, from the raw tables `plan.gather` returns. Every number over seeds (or
pairs of seeds) is a mean with its 95 % t interval (NaN with one replicate).

Paths: per pair, path, group and label, the loss and error barriers (`paths.barriers`); over the pairs of a
kind and rate(s), their mean and interval. The three seed pairs of three seeds share models, so their
spread understates the spread of independent pairs: the interval is optimistic, and says so in the report.
"""

import pandas as pd

from overparam.experiments.landscape import intrinsic
from overparam.experiments.landscape.paths import barriers
from overparam.experiments.landscape.tunnel import half_radii

PAIR_KEYS = ["pair", "rate_a", "rate_b", "seed_a", "seed_b"]
# Li et al. (2018), section 3.1 and table 1: d_int90 of the two MNIST networks on the full data set.
PUBLISHED_D_INT90 = {("mlp", 25): 750, ("lenet5", 1): 290}


def intrinsic_tables(subspace: pd.DataFrame) -> dict[str, pd.DataFrame]:
    per_seed = intrinsic.d_int90_per_seed(subspace)
    summary = intrinsic.d_int90_summary(per_seed)
    summary["published_d_int90"] = [
        PUBLISHED_D_INT90.get((model, width))
        for model, width in zip(summary["model"], summary["width"], strict=True)
    ]
    return {
        "d_int90_per_seed": per_seed,
        "d_int90": summary,
        "intrinsic_curves": intrinsic.fit_curves(subspace),
    }


def memorisation_tables(subspace: pd.DataFrame) -> dict[str, pd.DataFrame]:
    thresholds = intrinsic.group_thresholds(subspace)
    cost = intrinsic.mislabel_cost(thresholds)
    keys = ["dataset", "model", "width", "train_size", "rate"]
    return {
        "memorisation_curves": intrinsic.fit_curves(subspace),
        "group_d90": thresholds,
        "group_d90_by_rate": intrinsic.over_seeds(
            thresholds, by=[*keys, "group"], columns=["d90", "d90_interpolated", "full_fit"]
        ),
        "mislabel_cost": cost,
        "mislabel_cost_by_rate": intrinsic.over_seeds(
            cost, by=keys, columns=["n_mislabelled", "extra_dims", "dims_per_mislabel"]
        )
        if len(cost)
        else cost,
    }


def path_tables(paths: pd.DataFrame) -> dict[str, pd.DataFrame]:
    per_pair = pd.concat(
        [
            barriers(frame).assign(**dict(zip(PAIR_KEYS, keys, strict=True)))
            for keys, frame in paths.groupby(PAIR_KEYS)
        ],
        ignore_index=True,
    )
    per_pair = per_pair[PAIR_KEYS + [c for c in per_pair.columns if c not in PAIR_KEYS]]
    values = ["loss_barrier", "error_barrier", "loss_start", "loss_end", "loss_max", "error_max"]
    by_kind = intrinsic.over_seeds(
        per_pair, by=["pair", "rate_a", "rate_b", "path", "group", "label"], columns=values
    )
    fit = paths.assign(accuracy=paths["correct"] / paths["n"])
    curves = intrinsic.over_seeds(
        fit, by=["pair", "rate_a", "rate_b", "path", "group", "label", "t"], columns=["accuracy", "loss"]
    )
    return {"path_barriers": per_pair, "path_barriers_summary": by_kind, "path_curves": curves}


def tunnel_tables(tunnel: pd.DataFrame) -> dict[str, pd.DataFrame]:
    radii = half_radii(tunnel)
    per_run = (
        radii.groupby(["run_id", "rate", "seed", "group"], sort=True)["half_radius"].mean().reset_index()
    )
    wide = per_run.pivot_table(index=["run_id", "rate", "seed"], columns="group", values="half_radius")
    if {"clean", "mislabelled"} <= set(wide.columns):
        difference = (wide["mislabelled"] - wide["clean"]).rename("mislabelled_minus_clean").reset_index()
        gap = intrinsic.over_seeds(difference, by=["rate"], columns=["mislabelled_minus_clean"])
    else:
        gap = pd.DataFrame()
    fit = tunnel.assign(fit=tunnel["correct"] / tunnel["n"])
    curves = intrinsic.over_seeds(
        fit.groupby(["rate", "seed", "group", "label", "radius"], sort=True)[["fit", "loss"]]
        .mean()
        .reset_index(),
        by=["rate", "group", "label", "radius"],
        columns=["fit", "loss"],
    )
    return {
        "tunnel_half_radius": radii,
        "tunnel_half_radius_by_rate": intrinsic.over_seeds(
            per_run, by=["rate", "group"], columns=["half_radius"]
        ),
        "tunnel_gap": gap,
        "tunnel_curves": curves,
    }


def analyse(raw: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Every analysis table whose raw table is there, by name (the CSV's name without .csv)."""
    tables: dict[str, pd.DataFrame] = {}
    if "subspace_intrinsic" in raw:
        tables |= intrinsic_tables(raw["subspace_intrinsic"])
    if "subspace_memorisation" in raw:
        tables |= memorisation_tables(raw["subspace_memorisation"])
    if "paths" in raw:
        tables |= path_tables(raw["paths"])
    if "tunnel" in raw:
        tables |= tunnel_tables(raw["tunnel"])
    return tables
