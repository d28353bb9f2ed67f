"""Binomial proportions with 95 % Wilson score intervals, and means over seeds with 95 % t intervals."""

from collections.abc import Iterable

import numpy as np
import pandas as pd

# The standard normal's 97.5 % quantile, scipy.stats.norm.ppf(0.975) (tests/test_stats.py): written out, as
# importing scipy.stats takes about a second and every run's probe imports this module.
Z95 = 1.959963984540054


def wilson_interval(
    *, successes: np.ndarray, trials: np.ndarray, z: float = Z95
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fraction and Wilson score interval of `successes` out of `trials`, elementwise.

    Returns (fraction, lower, upper), each shaped like the broadcast inputs; NaN where trials is 0.
    """
    k = np.asarray(successes, dtype=float)
    n = np.asarray(trials, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        denominator = 1 + z**2 / n
        centre = (p + z**2 / (2 * n)) / denominator
        half_width = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denominator
    return p, np.clip(centre - half_width, 0.0, 1.0), np.clip(centre + half_width, 0.0, 1.0)


def add_wilson_columns(frame: pd.DataFrame, counts: Iterable[str]) -> pd.DataFrame:
    """`frame` (changed in place and returned) with `<count>_fraction`, `<count>_low` and `<count>_high` of
    every count column out of its `n` column."""
    for name in counts:
        fraction, low, high = wilson_interval(successes=frame[name].to_numpy(), trials=frame["n"].to_numpy())
        frame[f"{name}_fraction"], frame[f"{name}_low"], frame[f"{name}_high"] = fraction, low, high
    return frame


def seed_mean(groups: "pd.core.groupby.DataFrameGroupBy", column: str) -> tuple[np.ndarray, np.ndarray]:
    """Per group (each row a seed, the replicate): the mean of `column` and the half-width of its 95 % t
    interval, NaN for a group of one seed."""
    from scipy.stats import t as student_t  # here: the probe imports this module, and scipy.stats is slow

    mean, sd = groups[column].mean().to_numpy(), groups[column].std().to_numpy()
    k = groups[column].size().to_numpy()
    half = np.where(k > 1, student_t.ppf(0.975, np.maximum(k - 1, 1)) * sd / np.sqrt(k), np.nan)
    return mean, half
