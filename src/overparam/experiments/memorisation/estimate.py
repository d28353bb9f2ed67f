"""The arithmetic of the memorisation experiment, on plain arrays and tables (no training, no store).

Memorisation (Feldman and Zhang 2020, their subsampled estimator): for image i and M models each trained on a
random subset, mem_i = P(correct on the assigned label | i in the subset) - P(correct | i not in it), each
probability the fraction of the models on that side. Its standard error is that of a difference of two
independent proportions: se_i = sqrt(p_in (1 - p_in) / n_in + p_out (1 - p_out) / n_out), with n_in, n_out
the numbers of models that did and did not train on i. That (Wald) error is 0 where both proportions are 0
or 1 (an image every model fits when trained on it and none otherwise), so `se_adjusted` beside it is
Agresti and Caffo's (2000): the same formula after adding one right and one wrong model to each side.
"""

import numpy as np
import pandas as pd
from scipy.stats import spearmanr
from scipy.stats import t as student_t

# The probe's and the training's own per-image scores in label_scores.csv, each oriented as sensitivity:
# +1 when a larger value means a more fragile prediction, -1 when a smaller one does. A flip level that is
# missing (never flipped on the grid) counts as beyond the grid: the least sensitive.
PROBE_SCORES = {
    "blur_flip_level": -1,
    "noise_flip_level": -1,
    "fgsm_flip_level": -1,
    "margin_at_0": -1,
    "aum": -1,
}
THRESHOLDS = (0.1, 0.25, 0.5, 0.75)  # memorisation above which an image counts as memorised (tail table)


def memorisation_counts(inside: np.ndarray, correct: np.ndarray) -> pd.DataFrame:
    """Per image (columns of the [M, N] bool arrays `inside` and `correct`): n_in, correct_in, n_out,
    correct_out, p_in, p_out, memorisation = p_in - p_out and its standard error `se` (module); NaN where a
    side has no model."""
    inside, correct = np.asarray(inside, dtype=bool), np.asarray(correct, dtype=bool)
    n_in, n_out = inside.sum(0), (~inside).sum(0)
    correct_in, correct_out = (correct & inside).sum(0), (correct & ~inside).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        p_in, p_out = correct_in / n_in, correct_out / n_out
        se = np.sqrt(p_in * (1 - p_in) / n_in + p_out * (1 - p_out) / n_out)
        a_in, a_out = (correct_in + 1) / (n_in + 2), (correct_out + 1) / (n_out + 2)
        adjusted = np.sqrt(a_in * (1 - a_in) / (n_in + 2) + a_out * (1 - a_out) / (n_out + 2))
    return pd.DataFrame(
        {
            "models": len(inside),
            "n_in": n_in,
            "correct_in": correct_in,
            "n_out": n_out,
            "correct_out": correct_out,
            "p_in": p_in,
            "p_out": p_out,
            "memorisation": p_in - p_out,
            "se": se,
            "se_adjusted": adjusted,
        }
    )


def sensitivity(frame: pd.DataFrame, score: str) -> np.ndarray:
    """Score `score` of label_scores.csv rows oriented so that larger = more sensitive (PROBE_SCORES)."""
    values = frame[score].to_numpy(dtype=float)
    if score.endswith("_flip_level"):
        values = np.where(np.isnan(values), np.inf, values)
    return PROBE_SCORES[score] * values


def t_summary(values: np.ndarray) -> dict[str, float]:
    """Mean of the replicates `values` (seeds), its 95 % t interval, two-sided p against 0, and the smallest
    mean the test would detect with 80 % power at alpha 0.05 given their spread (NaN with one replicate)."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    k = len(values)
    mean = float(values.mean()) if k else float("nan")
    if k < 2:
        return {"seeds": k, "mean": mean, "low": np.nan, "high": np.nan, "p": np.nan, "detectable": np.nan}
    se = values.std(ddof=1) / np.sqrt(k)
    q = student_t.ppf(0.975, k - 1)
    p = float(2 * student_t.sf(abs(mean) / se, k - 1)) if se > 0 else (0.0 if mean != 0 else 1.0)
    detectable = float((q + student_t.ppf(0.8, k - 1)) * se)
    return {
        "seeds": k,
        "mean": mean,
        "low": mean - q * se,
        "high": mean + q * se,
        "p": p,
        "detectable": detectable,
    }


def correlations(scores: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per run (`keys`) x group (clean, mislabelled) x probe score present: Spearman's rank correlation of
    memorisation with the score's sensitivity over the run's images with both measured, and n."""
    rows = []
    present = [s for s in PROBE_SCORES if s in scores]
    for key, run in scores.groupby(keys, sort=True):
        for group, images in (("clean", run[~run["mislabelled"]]), ("mislabelled", run[run["mislabelled"]])):
            if not len(images):  # a rate-0 run has no mislabelled image
                continue
            for score in present:
                memorised = images["memorisation"].to_numpy(dtype=float)
                sensitive = sensitivity(images, score)
                usable = ~np.isnan(memorised) & ~np.isnan(sensitive)
                rho = np.nan
                if usable.sum() > 2 and np.ptp(memorised[usable]) > 0 and np.ptp(sensitive[usable]) > 0:
                    rho = float(spearmanr(memorised[usable], sensitive[usable]).statistic)
                rows.append(
                    {
                        **dict(zip(keys, key, strict=True)),
                        "group": group,
                        "score": score,
                        "n": int(usable.sum()),
                        "spearman": rho,
                    }
                )
    return pd.DataFrame(rows)


def over_seeds(table: pd.DataFrame, by: list[str], value: str) -> pd.DataFrame:
    """Per `by` group, `t_summary` of `value` over its rows (one per seed)."""
    rows = []
    for key, part in table.groupby(by, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(by, key, strict=True)), **t_summary(part[value].to_numpy())})
    return pd.DataFrame(rows)


def tail(memorisation: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per run x group (clean, mislabelled): the distribution of the memorisation estimate: n, mean,
    quantiles 0.5, 0.9, 0.99, and the fraction of images above each of THRESHOLDS."""
    rows = []
    for key, run in memorisation.groupby(keys, sort=True):
        for group, images in (("clean", run[~run["mislabelled"]]), ("mislabelled", run[run["mislabelled"]])):
            values = images["memorisation"].dropna().to_numpy(dtype=float)
            if not len(values):
                continue
            row = {
                **dict(zip(keys, key, strict=True)),
                "group": group,
                "n": len(values),
                "mean": values.mean(),
            }
            row |= {f"q{int(q * 100)}": float(np.quantile(values, q)) for q in (0.5, 0.9, 0.99)}
            row |= {f"above_{t:g}": float((values > t).mean()) for t in THRESHOLDS}
            rows.append(row)
    return pd.DataFrame(rows)


def removal_differences(removal: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """removal.csv (a row per run x removed set x k x repeat, with test_acc) -> per run x k x repeat: test
    accuracy without k random images minus without the k most memorised (positive: the memorised images
    were worth more), paired within seed and repeat."""
    wide = removal.pivot_table(
        index=[*keys, "k", "repeat"], columns="removed", values="test_acc"
    ).reset_index()
    wide["difference"] = wide["random"] - wide["top"]
    return wide.rename(columns={"random": "test_acc_random", "top": "test_acc_top"})
