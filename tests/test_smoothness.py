"""The roughness resampling test of smoothness.py on synthetic runs: no data files, no training."""

import numpy as np
import pandas as pd
import pytest
from scipy.stats import t as student_t

from overparam.experiments.perturbation.smoothness import (
    ONE_SEED,
    curve_roughness,
    resampled_roughness,
    roughness_by_rate,
    roughness_test,
)
from overparam.results import RunImages

KEYS = {"variant": "all", "dataset": "mnist", "model": "resnet18", "width": 16, "train_size": 6000}


def make_run(
    changed: np.ndarray,
    group: np.ndarray,
    sigmas: np.ndarray,
    *,
    rate: float = 0.1,
    seed: int = 0,
    fit: np.ndarray | None = None,
    perturbation: str = "blur",
) -> RunImages:
    """A run whose images change (prediction != sigma-0 prediction) where changed [S, N] is True; images
    with fit False have a sigma-0 prediction that differs from their assigned label."""
    count = changed.shape[1]
    labels = np.arange(count) % 10
    predictions = np.where(changed, (labels + 1) % 10, labels)
    predictions[0] = labels
    fit = np.ones(count, bool) if fit is None else fit
    assigned = np.where(fit, labels, (labels + 2) % 10)
    return RunImages(
        keys=KEYS | {"rate": rate, "seed": seed},
        perturbation=perturbation,
        levels=sigmas,
        predictions=predictions,
        group=group,
        index=np.arange(count),
        true_label=labels,
        assigned_label=assigned,
    )


def random_changes(rng: np.random.Generator, sigmas: np.ndarray, count: int, flicker: float) -> np.ndarray:
    """[S, count] changed: each image changes from a random flip sigma on, with independent flicker."""
    changed = sigmas[:, None] >= rng.exponential(sigmas[-1], count)[None, :]
    changed ^= rng.random(changed.shape) < flicker
    changed[0] = False
    return changed


def groups(count: int, mislabelled: int) -> np.ndarray:
    return np.array(["mislabelled"] * mislabelled + ["clean"] * (count - mislabelled) + ["test"] * 5)


def test_roughness_of_a_straight_line_is_zero_on_even_and_uneven_grids() -> None:
    for sigmas in (np.linspace(0, 5, 26), np.array([0, 0.1, 0.5, 0.6, 2.0, 3.5, 5.0])):
        assert curve_roughness(0.1 + 0.15 * sigmas, sigmas) == pytest.approx(0, abs=1e-15)
        assert curve_roughness(np.full_like(sigmas, 0.3), sigmas) == pytest.approx(0, abs=1e-15)


def test_roughness_is_the_rms_departure_from_the_neighbours_line() -> None:
    sigmas = np.arange(6.0)
    zigzag = np.array([0, 0.2, 0, 0.2, 0, 0.2])  # each interior point 0.2 off its neighbours' line
    assert curve_roughness(zigzag, sigmas) == pytest.approx(0.2)
    # half the RMS second difference on an even grid, and independent of the sigma unit
    curve = np.random.default_rng(1).random(6)
    second = curve[:-2] - 2 * curve[1:-1] + curve[2:]
    assert curve_roughness(curve, sigmas) == pytest.approx(np.sqrt(np.mean(second**2)) / 2)
    assert curve_roughness(curve, 0.1 * sigmas) == pytest.approx(curve_roughness(curve, sigmas))
    # uneven grid: a kink of 0.1 at the middle point of (0, 1, 3) is 0.1 off the line through (0, 0), (3, 0)
    assert curve_roughness(np.array([0, 0.1, 0]), np.array([0.0, 1.0, 3.0])) == pytest.approx(0.1)
    assert np.isnan(curve_roughness(np.zeros(2), np.arange(2.0)))
    assert curve_roughness(np.stack([zigzag, zigzag / 2]), sigmas) == pytest.approx([0.2, 0.1])


def test_resampled_subsets_match_a_plain_draw_without_replacement() -> None:
    rng = np.random.default_rng(2)
    sigmas = np.linspace(0, 2, 9)
    changed = random_changes(rng, sigmas, 60, flicker=0.1)
    fast = resampled_roughness(changed, sigmas, size=12, n_resamples=4000, rng=np.random.default_rng(3))
    draws = [rng.choice(60, size=12, replace=False) for _ in range(4000)]
    plain = np.array([curve_roughness(changed[:, draw].mean(axis=1), sigmas) for draw in draws])
    assert fast.mean() == pytest.approx(plain.mean(), rel=0.03)
    assert np.quantile(fast, [0.1, 0.5, 0.9]) == pytest.approx(np.quantile(plain, [0.1, 0.5, 0.9]), rel=0.06)
    # the whole set: every resample is the full curve
    whole = resampled_roughness(changed, sigmas, size=60, n_resamples=3, rng=rng)
    assert whole == pytest.approx([curve_roughness(changed.mean(axis=1), sigmas)] * 3)


def test_p_values_are_roughly_uniform_when_mislabelled_images_are_like_clean_ones() -> None:
    rng = np.random.default_rng(4)
    sigmas = np.linspace(0, 3, 11)
    runs = [
        make_run(random_changes(rng, sigmas, 405, flicker=0.05), groups(400, 40), sigmas, seed=seed)
        for seed in range(200)
    ]
    table = roughness_test(runs, n_resamples=199, seed=5, subsets=("all",))
    p = table["p_value"].to_numpy()
    assert len(p) == 200 and table["n_mislabelled"].eq(40).all() and table["n_clean"].eq(360).all()
    assert 0.01 <= np.mean(p < 0.05) <= 0.10
    assert 0.15 <= np.mean(p < 0.25) <= 0.35
    assert 0.4 <= np.median(p) <= 0.6


def test_mislabelled_curve_with_extra_wiggle_is_rougher_than_clean_subsets() -> None:
    rng = np.random.default_rng(6)
    sigmas = np.linspace(0, 5, 21)
    changed = random_changes(rng, sigmas, 1005, flicker=0.02)
    # a third of the mislabelled images are changed only at every other sigma
    wiggle = np.zeros((len(sigmas), 30), bool)
    wiggle[1::2] = True
    changed[:, :30] = wiggle
    fit = np.ones(1005, bool)
    fit[::7] = False
    table = roughness_test([make_run(changed, groups(1000, 100), sigmas, fit=fit)], n_resamples=499)
    assert list(table["subset"]) == ["all", "fit"]
    assert (table["p_value"] < 0.05).all() and (table["ratio"] > 1).all()
    assert (table["roughness"] > table["resampled_high"]).all()
    assert table["note"].eq("").all()
    fit_row = table.iloc[1]
    assert fit_row["n_mislabelled"] == fit[:100].sum() and fit_row["n_clean"] == fit[100:1000].sum()
    first = table.iloc[0]
    assert first["ratio"] == pytest.approx(first["roughness"] / first["resampled_median"])
    assert first["log_ratio"] == pytest.approx(np.log(first["ratio"]))


def test_same_seed_same_table_and_other_seed_other_resamples() -> None:
    rng = np.random.default_rng(7)
    sigmas = np.linspace(0, 3, 11)
    runs = [
        make_run(random_changes(rng, sigmas, 305, flicker=0.05), groups(300, 30), sigmas, seed=seed)
        for seed in range(3)
    ]
    first = roughness_test(runs, n_resamples=99, seed=1)
    pd.testing.assert_frame_equal(first, roughness_test(runs, n_resamples=99, seed=1))
    # each subset has its own stream: asking for one alone gives the same numbers
    pd.testing.assert_frame_equal(
        first[first["subset"] == "fit"].reset_index(drop=True),
        roughness_test(runs, n_resamples=99, seed=1, subsets=("fit",)),
    )
    other = roughness_test(runs, n_resamples=99, seed=2)
    assert not np.allclose(first["resampled_median"], other["resampled_median"])
    assert np.allclose(first["roughness"], other["roughness"])


def test_untestable_runs_are_skipped_or_marked() -> None:
    sigmas = np.linspace(0, 3, 7)
    changed = random_changes(np.random.default_rng(8), sigmas, 25, flicker=0.1)
    no_mislabelled = make_run(changed, groups(20, 0), sigmas, rate=0.0)
    unfit = make_run(changed, groups(20, 5), sigmas, fit=np.r_[np.zeros(5, bool), np.ones(20, bool)])
    few_clean = make_run(changed, groups(20, 10), sigmas, rate=0.5)
    table = roughness_test([no_mislabelled, unfit, few_clean], n_resamples=9)
    assert list(zip(table["rate"], table["subset"], strict=True)) == [
        (0.1, "all"),
        (0.1, "fit"),
        (0.5, "all"),
        (0.5, "fit"),
    ]
    assert table["note"].tolist() == [
        "",
        "no mislabelled images in this subset",
        "no more clean images than mislabelled ones",
        "no more clean images than mislabelled ones",
    ]
    assert table["p_value"].isna().tolist() == [False, True, True, True]
    summary = roughness_by_rate(table)
    assert len(summary) == 1 and summary.iloc[0]["basis"] == ONE_SEED
    assert roughness_by_rate(roughness_test([no_mislabelled])).empty


def test_by_rate_interval_is_a_t_interval_over_seeds() -> None:
    log_ratios = np.array([0.3, 0.1, 0.45, 0.2])
    p_values = np.array([0.01, 0.2, 0.04, 0.5])
    table = pd.DataFrame(
        [
            KEYS
            | {"rate": 0.1, "seed": seed, "perturbation": "blur", "subset": "all"}
            | {"log_ratio": value, "p_value": p}
            for seed, (value, p) in enumerate(zip(log_ratios, p_values, strict=True))
        ]
        + [
            KEYS
            | {"rate": 0.01, "seed": 0, "perturbation": "blur", "subset": "all"}
            | {"log_ratio": -0.2, "p_value": 0.9}
        ]
    )
    summary = roughness_by_rate(table).set_index("rate")
    assert (summary["perturbation"] == "blur").all()
    many, one = summary.loc[0.1], summary.loc[0.01]
    half = student_t.ppf(0.975, 3) * log_ratios.std(ddof=1) / 2
    assert many["n_seeds"] == 4 and many["n_significant"] == 2
    assert many["mean_log_ratio"] == pytest.approx(log_ratios.mean())
    assert (many["log_ratio_low"], many["log_ratio_high"]) == pytest.approx(
        (log_ratios.mean() - half, log_ratios.mean() + half)
    )
    assert many["ratio"] == pytest.approx(np.exp(log_ratios.mean()))
    assert many["ratio_high"] == pytest.approx(np.exp(log_ratios.mean() + half))
    assert many["basis"] == "4 seeds: between models"
    assert one["n_seeds"] == 1 and one["basis"] == ONE_SEED and one["n_significant"] == 0
    assert np.isnan(one["log_ratio_low"]) and np.isnan(one["ratio_high"])
    assert one["rate_percent"] == pytest.approx(1.0)


def test_each_perturbation_is_tested_apart_with_its_own_draws() -> None:
    """A run under blur and noise: a row per perturbation and subset; blur's rows are those of blur alone
    (its random draws do not depend on the other perturbation), and the by-rate summary keeps them apart."""
    rng = np.random.default_rng(9)
    sigmas, levels = np.linspace(0, 3, 11), np.linspace(0, 0.3, 7)
    runs = [
        make_run(
            random_changes(rng, grid, 305, flicker=0.05), groups(300, 30), grid, seed=seed, perturbation=name
        )
        for seed in range(2)
        for name, grid in (("blur", sigmas), ("noise", levels))
    ]
    both = roughness_test(runs, n_resamples=99, seed=3)
    alone = roughness_test([run for run in runs if run.perturbation == "blur"], n_resamples=99, seed=3)
    assert list(both.columns[: both.columns.get_loc("subset")])[-2:] == ["seed", "perturbation"]
    assert both.groupby("perturbation").size().to_dict() == {"blur": 4, "noise": 4}
    pd.testing.assert_frame_equal(both[both["perturbation"] == "blur"].reset_index(drop=True), alone)
    noise = both[(both["perturbation"] == "noise") & (both["subset"] == "all")]
    noise_runs = [run for run in runs if run.perturbation == "noise"]
    for run, roughness in zip(noise_runs, noise["roughness"], strict=True):  # on noise's own levels
        mislabelled = run.predictions[:, run.group == "mislabelled"]
        assert roughness == pytest.approx(
            curve_roughness((mislabelled != mislabelled[0]).mean(axis=1), levels)
        )
    by_rate = roughness_by_rate(both)
    expected = [["blur", "all"], ["blur", "fit"], ["noise", "all"], ["noise", "fit"]]
    assert by_rate[["perturbation", "subset"]].to_numpy().tolist() == expected
    assert (by_rate["n_seeds"] == 2).all()
