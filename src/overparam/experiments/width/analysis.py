"""The width sweep's analysis: pure functions on the tidy table of runs (`width_runs.csv`, one row per
model x width x rate x seed).

Seeds are the replicates: every interval is a 95 % t interval over seeds. The interpolation threshold of a
seed is the smallest width on the grid whose fit of all assigned labels reaches the target; thresholds are
summarised on log2 width (geometric mean, t interval there). The peak test is paired within seed: each
seed's test error at its own threshold width minus the mean of its two neighbours on the grid, the
threshold chosen from the fit alone, so a flat error curve gives differences centred on 0.
"""

import numpy as np
import pandas as pd
from scipy.stats import t as student_t

FAMILY = ["dataset", "model"]  # one width grid per family
ALPHA = 0.05  # the peak test is one-sided at this level
POWER = 0.8  # of the smallest detectable peak
CURVE_COLUMNS = (
    "test_error",
    "test_loss",
    "train_acc",
    "clean_fit",
    "mislabelled_fit",
    "blur_gap",
    "blur_auroc",
)
# What is tested at the threshold, against its two grid neighbours: a peak of test error and loss (one-sided,
# as double descent predicts), a change either way of how the probe treats the mislabelled images.
ALTERNATIVES = {
    "test_error": "greater",
    "test_loss": "greater",
    "blur_gap": "two-sided",
    "blur_auroc": "two-sided",
}


def t_summary(values: np.ndarray) -> tuple[float, float, float]:
    """Mean of `values` [k] (NaN dropped) and its 95 % t interval (low, high); NaN bounds for k < 2."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return np.nan, np.nan, np.nan
    mean = float(values.mean())
    if len(values) < 2:
        return mean, np.nan, np.nan
    half = float(student_t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))
    return mean, mean - half, mean + half


def curves(runs: pd.DataFrame) -> pd.DataFrame:
    """Per family x rate x width: parameters, parameters per training image, seeds, and the mean over seeds
    of each of CURVE_COLUMNS present in `runs` with its 95 % t interval (`<column>`, `_low`, `_high`)."""
    rows = []
    for (dataset, model, rate, width), group in runs.groupby([*FAMILY, "rate", "width"], sort=True):
        row = {"dataset": dataset, "model": model, "rate": rate, "width": width}
        row |= {"parameters": int(group["parameters"].iloc[0]), "seeds": len(group)}
        row["parameters_per_image"] = float(group["parameters_per_image"].iloc[0])
        for column in CURVE_COLUMNS:
            if column in group:
                mean, low, high = t_summary(group[column].to_numpy())
                row |= {column: mean, f"{column}_low": low, f"{column}_high": high}
        rows.append(row)
    return pd.DataFrame(rows)


def seed_thresholds(runs: pd.DataFrame, *, target: float = 0.999) -> pd.DataFrame:
    """Per family x rate x seed: `threshold`, the smallest width whose `train_acc` (fit of all assigned
    labels) is at least `target` (NaN when no width on the grid reaches it), and the grid's last width."""
    rows = []
    for (dataset, model, rate, seed), group in runs.groupby([*FAMILY, "rate", "seed"], sort=True):
        reached = group.loc[group["train_acc"] >= target, "width"]
        rows.append(
            {"dataset": dataset, "model": model, "rate": rate, "seed": seed}
            | {"threshold": float(reached.min()) if len(reached) else np.nan}
            | {"largest_width": float(group["width"].max())}
        )
    return pd.DataFrame(rows)


def thresholds(per_seed: pd.DataFrame) -> pd.DataFrame:
    """Per family x rate, from `seed_thresholds`: the geometric mean of the seeds' thresholds and its 95 % t
    interval on log2 width (back-transformed), their range, and how many seeds reached the target at all
    (the summary is NaN unless every seed did: a seed that never fits has a threshold beyond the grid)."""
    rows = []
    for (dataset, model, rate), group in per_seed.groupby([*FAMILY, "rate"], sort=True):
        found = group["threshold"].to_numpy(dtype=float)
        reached = int(np.isfinite(found).sum())
        mean, low, high = t_summary(np.log2(found)) if reached == len(found) else (np.nan,) * 3
        rows.append(
            {"dataset": dataset, "model": model, "rate": rate, "seeds": len(found), "seeds_reached": reached}
            | {"threshold": 2**mean, "threshold_low": 2**low, "threshold_high": 2**high}
            | {"threshold_min": np.nanmin(found) if reached else np.nan}
            | {"threshold_max": np.nanmax(found) if reached else np.nan}
        )
    return pd.DataFrame(rows)


def peak_differences(
    runs: pd.DataFrame, per_seed: pd.DataFrame, *, column: str = "test_error"
) -> pd.DataFrame:
    """Per family x rate x seed with a threshold inside the grid: `column` at the seed's threshold width
    minus the mean of `column` at the widths just below and above it on the grid (`difference`); a seed whose
    threshold is missing or at either end of the grid is left out."""
    keys = [*FAMILY, "rate", "seed"]
    found = {tuple(row[:-1]): row[-1] for row in per_seed[[*keys, "threshold"]].itertuples(index=False)}
    rows = []
    for key, curve in runs.groupby(keys, sort=True):
        threshold = found.get(tuple(key), np.nan)
        if not np.isfinite(threshold):
            continue
        curve = curve.sort_values("width")
        widths, values = curve["width"].to_numpy(dtype=float), curve[column].to_numpy(dtype=float)
        at = int(np.flatnonzero(widths == threshold)[0])
        if at == 0 or at == len(widths) - 1:
            continue
        neighbours = (values[at - 1] + values[at + 1]) / 2
        rows.append(
            dict(zip(keys, key, strict=True))
            | {"threshold": threshold, "at_threshold": values[at], "neighbours": neighbours}
            | {"difference": values[at] - neighbours}
        )
    return pd.DataFrame(rows, columns=[*keys, "threshold", "at_threshold", "neighbours", "difference"])


def peak_test(differences: np.ndarray, *, alternative: str = "greater") -> dict[str, float]:
    """The verdict from the paired differences [k] (one per seed): their mean with its 95 % t interval, the
    p-value of the t test on k - 1 degrees of freedom ("greater": mean > 0, a peak; "two-sided": mean != 0,
    a change), and the smallest effect the test detects with POWER at ALPHA: (t_{1-ALPHA, k-1} +
    t_{POWER, k-1}) sd / sqrt(k), with ALPHA / 2 for two-sided (ignoring the far tail). NaN for k < 2."""
    values = np.asarray(differences, dtype=float)
    values = values[np.isfinite(values)]  # a seed whose probe found no fit mislabelled image there
    k = len(values)
    mean, low, high = t_summary(values)
    if k < 2:
        return {"k": k, "mean": mean, "low": low, "high": high, "p_value": np.nan, "detectable": np.nan}
    se = values.std(ddof=1) / np.sqrt(k)
    two_sided = alternative == "two-sided"
    if se > 0:
        p = float(2 * student_t.sf(abs(mean) / se, k - 1) if two_sided else student_t.sf(mean / se, k - 1))
    else:
        p = 0.0 if (mean != 0 if two_sided else mean > 0) else 1.0
    level = ALPHA / 2 if two_sided else ALPHA
    detectable = float((student_t.ppf(1 - level, k - 1) + student_t.ppf(POWER, k - 1)) * se)
    return {"k": k, "mean": mean, "low": low, "high": high, "p_value": p, "detectable": detectable}


def peaks(runs: pd.DataFrame, per_seed: pd.DataFrame) -> pd.DataFrame:
    """Per family x rate x measure of ALTERNATIVES present in `runs`: the test of the paired differences
    (`peak_differences`, `peak_test` with the measure's `alternative`) and `peak` (p-value below ALPHA: a
    peak for "greater", a change for "two-sided")."""
    rows = []
    for column, alternative in ALTERNATIVES.items():
        if column not in runs:
            continue
        found = {
            key: group["difference"].to_numpy()
            for key, group in peak_differences(runs, per_seed, column=column).groupby([*FAMILY, "rate"])
        }
        for (dataset, model, rate), group in per_seed.groupby([*FAMILY, "rate"], sort=True):
            test = peak_test(found.get((dataset, model, rate), np.array([])), alternative=alternative)
            rows.append(
                {"dataset": dataset, "model": model, "rate": rate, "measure": column, "seeds": len(group)}
                | {"alternative": alternative}
                | test
                | {"peak": bool(test["p_value"] < ALPHA) if np.isfinite(test["p_value"]) else False}
            )
    return pd.DataFrame(rows)


def analyse(runs: pd.DataFrame, *, target: float = 0.999) -> dict[str, pd.DataFrame]:
    """Every analysis table of the sweep, by CSV name."""
    per_seed = seed_thresholds(runs, target=target)
    return {
        "width_curves": curves(runs),
        "threshold_per_seed": per_seed,
        "thresholds": thresholds(per_seed),
        "peak_differences": peak_differences(runs, per_seed),
        "peaks": peaks(runs, per_seed),
    }
