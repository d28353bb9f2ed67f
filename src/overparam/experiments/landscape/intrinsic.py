"""Intrinsic dimension from the subspace trainings' table (`subspace.csv` rows: run keys, dim, projection,
group, n, fit, agree_true; dim 0 is the full network).

d_int90 as Li et al. (2018) define it: the smallest d on the grid whose test accuracy reaches 90 % of the
full network's (trained with the same optimiser and epochs), per seed; over seeds, the mean with a 95 % t
interval, beside the per-seed values. A seed whose largest d stays below the threshold has no d_int90 (NaN,
reported as "above the grid").

Memorisation: per run and group (clean, mislabelled), the fraction of images fit (predicted as their
assigned label) at each d, and `d90`: the smallest grid d at which the fraction reaches 0.9, with
`d90_interpolated`, where the fraction crosses 0.9 on a line in log d between the two grid points around it
(the grid value is coarse; the interpolation is what the cost per mislabelled image is computed from).
"""

import numpy as np
import pandas as pd

from overparam.stats import seed_mean

THRESHOLD = 0.9
RUN_KEYS = ["dataset", "model", "width", "train_size", "rate", "seed"]


def first_reaching(*, dims: np.ndarray, values: np.ndarray, threshold: float) -> float:
    """The smallest of `dims` [K] (ascending) whose value [K] reaches `threshold`; NaN when none does."""
    reached = np.flatnonzero(values >= threshold)
    return float(dims[reached[0]]) if len(reached) else float("nan")


def crossing(*, dims: np.ndarray, values: np.ndarray, threshold: float) -> float:
    """Where `values` [K] over ascending `dims` [K] (all >= 1) first reach `threshold`, on a line in log d
    between the grid point before and the first that reaches it; the first grid d when it already does;
    NaN when none does."""
    reached = np.flatnonzero(values >= threshold)
    if not len(reached):
        return float("nan")
    k = reached[0]
    if k == 0:
        return float(dims[0])
    low, high = np.log(dims[k - 1]), np.log(dims[k])
    share = (threshold - values[k - 1]) / (values[k] - values[k - 1])
    return float(np.exp(low + share * (high - low)))


def with_fractions(subspace: pd.DataFrame) -> pd.DataFrame:
    """`subspace` with `fit_fraction` and `agree_true_fraction` (counts over n)."""
    frame = subspace.copy()
    frame["fit_fraction"] = frame["fit"] / frame["n"]
    frame["agree_true_fraction"] = frame["agree_true"] / frame["n"]
    return frame


def d_int90_per_seed(subspace: pd.DataFrame) -> pd.DataFrame:
    """Per run (keys): the full network's test accuracy, the threshold (90 % of it) and d_int90 on the grid
    of the subspace rows (dim >= 1)."""
    test = with_fractions(subspace[subspace["group"] == "test"])
    rows = []
    for keys, run in test.groupby(RUN_KEYS, sort=True):
        full = run[run["dim"] == 0]["fit_fraction"]
        baseline = float(full.iloc[0]) if len(full) else float("nan")
        grid = run[run["dim"] > 0].sort_values("dim")
        dims, accuracy = grid["dim"].to_numpy(), grid["fit_fraction"].to_numpy()
        rows.append(
            {
                **dict(zip(RUN_KEYS, keys, strict=True)),
                "full_test_acc": baseline,
                "threshold": THRESHOLD * baseline,
                "d_int90": first_reaching(dims=dims, values=accuracy, threshold=THRESHOLD * baseline),
                "largest_dim": int(dims.max()) if len(dims) else 0,
            }
        )
    return pd.DataFrame(rows)


def d_int90_summary(per_seed: pd.DataFrame) -> pd.DataFrame:
    """Per network (model, width, train size): d_int90 over seeds (mean and 95 % t interval over the seeds
    that reached the threshold, min, max), seeds, seeds above the grid, and the full network's mean test
    accuracy."""
    keys = ["dataset", "model", "width", "train_size"]
    reached = per_seed.dropna(subset=["d_int90"])
    groups = reached.groupby(keys, sort=True)
    mean, half = seed_mean(groups, "d_int90") if len(reached) else (np.array([]), np.array([]))
    summary = groups["d_int90"].agg(["min", "max", "size"]).reset_index()
    summary = summary.rename(columns={"min": "d_int90_min", "max": "d_int90_max", "size": "seeds_reached"})
    summary["d_int90"], summary["d_int90_low"], summary["d_int90_high"] = mean, mean - half, mean + half
    everything = per_seed.groupby(keys, sort=True).agg(
        seeds=("seed", "size"), full_test_acc=("full_test_acc", "mean"), largest_dim=("largest_dim", "max")
    )
    summary = everything.reset_index().merge(summary, on=keys, how="left")
    summary["seeds_reached"] = summary["seeds_reached"].fillna(0).astype(int)
    summary["seeds_above_grid"] = summary["seeds"] - summary["seeds_reached"]
    return summary


def group_thresholds(subspace: pd.DataFrame) -> pd.DataFrame:
    """Per run and training group (clean, mislabelled): n, d90 (grid) and d90_interpolated, at which the
    fraction fit reaches 0.9, and the full network's fraction fit."""
    frame = with_fractions(subspace[subspace["group"].isin(["clean", "mislabelled"]) & (subspace["n"] > 0)])
    rows = []
    for keys, run in frame.groupby([*RUN_KEYS, "group"], sort=True):
        grid = run[run["dim"] > 0].sort_values("dim")
        dims, fit = grid["dim"].to_numpy(), grid["fit_fraction"].to_numpy()
        full = run[run["dim"] == 0]["fit_fraction"]
        rows.append(
            {
                **dict(zip([*RUN_KEYS, "group"], keys, strict=True)),
                "n": int(run["n"].iloc[0]),
                "full_fit": float(full.iloc[0]) if len(full) else float("nan"),
                "d90": first_reaching(dims=dims, values=fit, threshold=THRESHOLD),
                "d90_interpolated": crossing(dims=dims, values=fit, threshold=THRESHOLD),
            }
        )
    return pd.DataFrame(rows)


def mislabel_cost(thresholds: pd.DataFrame) -> pd.DataFrame:
    """Per run with mislabels: the extra dimensions its mislabelled images need beyond its clean images to be
    90 % fit (interpolated d90 of mislabelled minus clean), and that per mislabelled image."""
    wide = thresholds.pivot_table(index=RUN_KEYS, columns="group", values="d90_interpolated", dropna=False)
    counts = thresholds.pivot_table(index=RUN_KEYS, columns="group", values="n")
    if "mislabelled" not in wide:
        return pd.DataFrame(columns=[*RUN_KEYS, "n_mislabelled", "extra_dims", "dims_per_mislabel"])
    cost = pd.DataFrame(
        {
            "n_mislabelled": counts["mislabelled"],
            "d90_clean": wide["clean"],
            "d90_mislabelled": wide["mislabelled"],
        }
    ).dropna(subset=["n_mislabelled"])
    cost["extra_dims"] = cost["d90_mislabelled"] - cost["d90_clean"]
    cost["dims_per_mislabel"] = cost["extra_dims"] / cost["n_mislabelled"]
    return cost.reset_index()


def over_seeds(frame: pd.DataFrame, *, by: list[str], columns: list[str]) -> pd.DataFrame:
    """Per `by` group: each of `columns` as mean over seeds (rows) with its 95 % t interval (`_low`,
    `_high`; NaN with one seed), its half-width `_detectable` (for a difference, the smallest mean these
    seeds could have told from none), and `seeds`, the rows that have a value."""
    out = frame.groupby(by, sort=True).size().rename("rows").reset_index()
    for column in columns:
        present = frame.dropna(subset=[column])
        groups = present.groupby(by, sort=True)
        mean, half = seed_mean(groups, column)
        part = groups.size().rename(f"{column}_seeds").reset_index()
        part[column], part[f"{column}_low"], part[f"{column}_high"] = mean, mean - half, mean + half
        part[f"{column}_detectable"] = half
        out = out.merge(part, on=by, how="left")
    return out.drop(columns="rows")


def fit_curves(subspace: pd.DataFrame) -> pd.DataFrame:
    """Per network, rate, group and d: the fraction fit (assigned label; test: true label) as mean over seeds
    with a 95 % t interval clipped to [0, 1]."""
    frame = with_fractions(subspace[subspace["n"] > 0])
    columns = ["fit_fraction", "agree_true_fraction"]
    curves = over_seeds(
        frame, by=["dataset", "model", "width", "train_size", "rate", "group", "dim"], columns=columns
    )
    bounds = [f"{column}_{end}" for column in columns for end in ("low", "high")]
    curves[bounds] = curves[bounds].clip(0, 1)  # fractions: a t interval past 0 or 1 says no more than 0 or 1
    return curves
