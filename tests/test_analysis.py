"""The statistics of analysis.py on synthetic tables and predictions: no data files, no training."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from overparam.across_rates import holm
from overparam.analysis import (
    KEYS,
    RunImages,
    Study,
    changed_areas,
    curve_summaries,
    flip_positions,
    half_sigma,
    image_curves,
    ratio_interval,
    starting_gap,
    summarise_images,
)
from overparam.probe import curves

RATES = (0.0, 1 / 125, 1 / 100, 1 / 90, 1 / 80, 1 / 70, 1 / 50, 1 / 20, 1 / 10)
NONZERO = np.array(RATES[1:])
FAMILY_KEYS = {"variant": "all", "dataset": "mnist", "model": "resnet18", "width": 16, "train_size": 6000}


def test_katz_ratio_matches_the_formula_and_handles_zero_counts() -> None:
    ratio, low, high = ratio_interval(
        errors_a=[10, 0, 0, 3], n_a=[50, 50, 50, 0], errors_b=[5, 4, 0, 1], n_b=[500] * 4
    )
    assert ratio[0] == pytest.approx((10 / 50) / (5 / 500))
    half_width = 1.959964 * np.sqrt(1 / 10 - 1 / 50 + 1 / 5 - 1 / 500)
    assert (low[0], high[0]) == pytest.approx(
        (ratio[0] * np.exp(-half_width), ratio[0] * np.exp(half_width)), rel=1e-5
    )
    # a zero count: +0.5 everywhere keeps the ratio and its interval finite
    assert ratio[1] == pytest.approx((0.5 / 50.5) / (4.5 / 500.5))
    assert 0 < low[1] < ratio[1] < high[1] < np.inf
    assert np.isnan(ratio[2]) and np.isnan(ratio[3])  # no errors at all; an empty group


def _run(
    predictions: np.ndarray, groups: list[str], assigned: np.ndarray, sigmas: np.ndarray, rate: float
) -> RunImages:
    return RunImages(
        keys={**FAMILY_KEYS, "rate": rate, "seed": 0},
        sigmas=sigmas,
        predictions=predictions,
        group=np.array(groups),
        index=np.arange(predictions.shape[1]),
        true_label=np.where(np.array(groups) == "mislabelled", (assigned + 1) % 10, assigned),
        assigned_label=assigned,
    )


@pytest.fixture(scope="module")
def synthetic() -> Study:
    """One run: 40 mislabelled images that all flip at sigma 0.5 (one of them misfit at sigma 0), 200 clean
    images of which half flip at 1.5 and half never, 100 test images flipping at 1.0."""
    sigmas = np.array([0.0, 0.5, 1.0, 1.5, 2.0])
    groups = ["mislabelled"] * 40 + ["clean"] * 200 + ["test"] * 100
    assigned = np.arange(340) % 10
    first = np.r_[np.full(40, 1), np.full(100, 3), np.full(100, 5), np.full(100, 2)]  # 5: never
    predictions = np.where(np.arange(5)[:, None] >= first, (assigned + 3) % 10, assigned)
    predictions[:, 0] = (assigned[0] + 5) % 10  # misfit, and its prediction never changes
    run = _run(predictions, groups, assigned, sigmas, rate=0.1)
    masks = {g: np.array(groups) == g for g in ("mislabelled", "clean", "test")}
    table = curves(
        predictions=predictions,
        sigmas=sigmas,
        true_labels=run.true_label,
        assigned_labels=assigned,
        groups=masks,
    ).assign(**run.keys)
    return Study(
        out=Path("."),
        config={},
        runs=pd.DataFrame([run.keys]),
        metrics=pd.DataFrame(),
        curves=table,
        flips=pd.DataFrame(),
        images=[run],
    )


def test_per_image_flip_positions_and_areas() -> None:
    predictions = np.array([[1, 1, 1], [1, 2, 1], [3, 2, 1], [3, 2, 1]])
    sigmas = np.array([0.0, 1.0, 2.0, 3.0])
    assert flip_positions(predictions).tolist() == [2, 1, 4]
    # image 0 changed at sigmas 2 and 3: trapezoid area 0.5 + 1 over a range of 3
    assert changed_areas(predictions, sigmas).tolist() == pytest.approx([0.5, 2.5 / 3, 0.0])


def test_half_sigma_interpolates_and_is_nan_when_never_reached() -> None:
    sigmas = np.array([0.0, 1.0, 2.0, 3.0])
    flipped = np.array([[0.0, 0.2, 0.6, 0.8], [0.0, 0.1, 0.2, 0.4], [0.0, 0.5, 0.9, 1.0]])
    assert half_sigma(flipped, sigmas)[[0, 2]].tolist() == pytest.approx([1.75, 1.0])
    assert np.isnan(half_sigma(flipped, sigmas)[1])


def test_multinomial_bootstrap_matches_resampling_images() -> None:
    rng = np.random.default_rng(0)
    positions = rng.integers(1, 6, size=300)
    areas = rng.choice([0.0, 0.25, 0.5, 0.75], size=300)
    sigmas = np.linspace(0, 2, 5)
    boot = summarise_images(positions=positions, areas=areas, sigmas=sigmas, n_bootstrap=2000, rng=rng)
    assert boot.auc == pytest.approx(areas.mean())
    assert boot.auc_draws.std() == pytest.approx(areas.std() / np.sqrt(300), rel=0.1)
    # the same half-flip sigma as the empirical distribution of flip sigmas gives
    flipped = np.array([(positions <= k).mean() for k in range(5)])
    assert boot.half_sigma == pytest.approx(float(half_sigma(flipped, sigmas)))
    resampled = rng.integers(0, 300, size=(2000, 300))
    direct = half_sigma(
        np.stack([(positions[resampled] <= k).mean(axis=1) for k in range(5)], axis=-1), sigmas
    )
    assert boot.half_sigma_draws.mean() == pytest.approx(direct.mean(), abs=0.01)
    assert boot.half_sigma_draws.std() == pytest.approx(direct.std(), rel=0.15)


def test_image_curves_agree_with_the_probe_curves(synthetic: Study) -> None:
    table = image_curves(synthetic)
    everything = table[table["subset"] == "all"].set_index(["group", "sigma"])
    probe = synthetic.curves.set_index(["group", "sigma"])
    assert everything["changed"].to_dict() == probe.loc[everything.index, "changed"].to_dict()
    fit = table[(table["subset"] == "fit") & (table["group"] == "mislabelled")]
    assert fit["n"].unique().tolist() == [39]
    clean = table[(table["subset"] == "all") & (table["group"] == "clean")]
    assert clean["flipped"].tolist() == [0, 0, 0, 100, 100]


def test_curve_summaries_and_gap_adjusted_comparison(synthetic: Study) -> None:
    summaries, gap = curve_summaries(synthetic, n_bootstrap=200, seed=0)
    values = summaries.set_index(["subset", "group", "summary"])["value"]
    assert values["fit", "mislabelled", "half_sigma"] == pytest.approx(0.25)  # all flip between 0 and 0.5
    assert values["all", "clean", "half_sigma"] == pytest.approx(1.5)  # exactly half flip at 1.5
    # changed from sigma 1 on: area 0.25 (the ramp from 0.5 to 1) + 1, over a range of 2
    assert values["all", "test", "auc"] == pytest.approx(0.625)
    row = gap.iloc[0]
    assert (row["n_mislabelled"], row["flipped_mislabelled"], row["n_clean"], row["flipped_clean"]) == (
        39,
        39,
        200,
        100,
    )
    assert row["logrank_statistic"] > 5 and row["p_value"] < 1e-6  # mislabelled flip much earlier
    assert 0 < row["auc_difference_low"] < row["auc_difference"] < row["auc_difference_high"]
    assert set(summaries.columns) >= {*KEYS, "rate_percent", "n", "low", "high", "se", "censored"}


def test_starting_gap_counts_errors_against_the_assigned_label(synthetic: Study) -> None:
    gap = starting_gap(synthetic.curves).iloc[0]
    assert (gap["n_mislabelled"], gap["errors_mislabelled"], gap["errors_clean"]) == (40, 1, 0)
    assert gap["error_mislabelled"] == pytest.approx(1 / 40)
    assert gap["error_mislabelled_low"] < 1 / 40 < gap["error_mislabelled_high"]
    assert gap["ratio"] > 1  # zero clean errors: corrected, finite


def test_holm_adjustment() -> None:
    assert holm(np.array([0.01, 0.04, 0.03, 0.5])).tolist() == pytest.approx([0.04, 0.09, 0.09, 0.5])
