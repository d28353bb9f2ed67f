import numpy as np
import pytest
from scipy.stats import binomtest, norm

from overparam.stats import Z95, wilson_interval


def test_z95_is_the_normal_quantile() -> None:
    assert norm.ppf(0.975) == Z95


@pytest.mark.parametrize(("k", "n"), [(0, 10), (3, 10), (10, 10), (1, 480), (250, 600), (59990, 60000)])
def test_matches_scipy_wilson(k: int, n: int) -> None:
    fraction, low, high = wilson_interval(successes=np.array([k]), trials=np.array([n]))
    reference = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert fraction[0] == pytest.approx(k / n)
    assert low[0] == pytest.approx(reference.low, abs=1e-12)
    assert high[0] == pytest.approx(reference.high, abs=1e-12)


def test_zero_trials_give_nan_and_shapes_broadcast() -> None:
    fraction, low, high = wilson_interval(successes=np.array([0, 2]), trials=np.array([0, 4]))
    assert np.isnan(fraction[0]) and np.isnan(low[0]) and np.isnan(high[0])
    assert low[1] < 0.5 < high[1]
