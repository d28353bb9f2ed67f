"""Binomial proportions with 95 % Wilson score intervals."""

import numpy as np
from scipy.stats import norm

Z95 = float(norm.ppf(0.975))


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
