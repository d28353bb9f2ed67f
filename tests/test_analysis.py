"""The statistics of analysis.py on synthetic tables and predictions: no data files, no training. Also
`write_study`: a whole study folder of synthetic runs, in the current format (one or more perturbations) or
in the format written before perturbations (blur only, sigma columns), which test_report.py reuses."""

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from overparam.experiments.perturbation.across_rates import holm
from overparam.experiments.perturbation.analysis import (
    analyse,
    changed_areas,
    curve_summaries,
    flip_positions,
    half_level,
    image_curves,
    ratio_interval,
    starting_gap,
    summarise_images,
)
from overparam.probe import curves
from overparam.results import KEYS, RunImages, Study, load_study

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
        perturbation="blur",
        levels=sigmas,
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
        levels=sigmas,
        true_labels=run.true_label,
        assigned_labels=assigned,
        groups=masks,
    ).assign(**run.keys, perturbation="blur")
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


def test_half_level_interpolates_and_is_nan_when_never_reached() -> None:
    sigmas = np.array([0.0, 1.0, 2.0, 3.0])
    flipped = np.array([[0.0, 0.2, 0.6, 0.8], [0.0, 0.1, 0.2, 0.4], [0.0, 0.5, 0.9, 1.0]])
    assert half_level(flipped, sigmas)[[0, 2]].tolist() == pytest.approx([1.75, 1.0])
    assert np.isnan(half_level(flipped, sigmas)[1])


def test_multinomial_bootstrap_matches_resampling_images() -> None:
    rng = np.random.default_rng(0)
    positions = rng.integers(1, 6, size=300)
    areas = rng.choice([0.0, 0.25, 0.5, 0.75], size=300)
    sigmas = np.linspace(0, 2, 5)
    boot = summarise_images(positions=positions, areas=areas, levels=sigmas, n_bootstrap=2000, rng=rng)
    assert boot.auc == pytest.approx(areas.mean())
    assert boot.auc_draws.std() == pytest.approx(areas.std() / np.sqrt(300), rel=0.1)
    # the same half-flip level as the empirical distribution of flip levels gives
    flipped = np.array([(positions <= k).mean() for k in range(5)])
    assert boot.half_level == pytest.approx(float(half_level(flipped, sigmas)))
    resampled = rng.integers(0, 300, size=(2000, 300))
    direct = half_level(
        np.stack([(positions[resampled] <= k).mean(axis=1) for k in range(5)], axis=-1), sigmas
    )
    assert boot.half_level_draws.mean() == pytest.approx(direct.mean(), abs=0.01)
    assert boot.half_level_draws.std() == pytest.approx(direct.std(), rel=0.15)


def test_image_curves_agree_with_the_probe_curves(synthetic: Study) -> None:
    table = image_curves(synthetic)
    everything = table[table["subset"] == "all"].set_index(["group", "level"])
    probe = synthetic.curves.set_index(["group", "level"])
    assert everything["changed"].to_dict() == probe.loc[everything.index, "changed"].to_dict()
    fit = table[(table["subset"] == "fit") & (table["group"] == "mislabelled")]
    assert fit["n"].unique().tolist() == [39]
    clean = table[(table["subset"] == "all") & (table["group"] == "clean")]
    assert clean["flipped"].tolist() == [0, 0, 0, 100, 100]


def test_curve_summaries_and_gap_adjusted_comparison(synthetic: Study) -> None:
    summaries, gap = curve_summaries(synthetic, n_bootstrap=200, seed=0)
    values = summaries.set_index(["subset", "group", "summary"])["value"]
    assert values["fit", "mislabelled", "half_level"] == pytest.approx(0.25)  # all flip between 0 and 0.5
    assert values["all", "clean", "half_level"] == pytest.approx(1.5)  # exactly half flip at 1.5
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
    assert (summaries["perturbation"] == "blur").all() and (gap["perturbation"] == "blur").all()


def test_starting_gap_counts_errors_against_the_assigned_label(synthetic: Study) -> None:
    gap = starting_gap(synthetic.curves).iloc[0]
    assert (gap["n_mislabelled"], gap["errors_mislabelled"], gap["errors_clean"]) == (40, 1, 0)
    assert gap["error_mislabelled"] == pytest.approx(1 / 40)
    assert gap["error_mislabelled_low"] < 1 / 40 < gap["error_mislabelled_high"]
    assert gap["ratio"] > 1  # zero clean errors: corrected, finite


def test_holm_adjustment() -> None:
    assert holm(np.array([0.01, 0.04, 0.03, 0.5])).tolist() == pytest.approx([0.04, 0.09, 0.09, 0.5])


# --- whole study folders ------------------------------------------------------------------------------------

LEVELS = {"blur": (0.0, 0.5, 1.0, 1.5, 2.0), "noise": (0.0, 0.05, 0.1, 0.2)}
STUDY_RATES, STUDY_SEEDS = (0.0, 0.05, 0.1), (0, 1)
N_CLEAN, N_TEST = 80, 40


def _synthetic_run(rate: float, seed: int, perturbations: Sequence[str]) -> dict:
    """One run's images and its predictions under each perturbation: the same unperturbed predictions for
    every perturbation (one model), mislabelled images flipping earlier than clean ones."""
    rng = np.random.default_rng([round(1000 * rate), seed])
    k = round(rate * N_CLEAN)
    true = np.r_[np.arange(N_CLEAN + k), np.arange(N_TEST)] % 10
    mislabelled = np.r_[np.ones(k, bool), np.zeros(N_CLEAN + N_TEST, bool)]
    assigned = np.where(mislabelled, (true + 1) % 10, true)
    at_zero = assigned.copy()
    at_zero[rng.random(len(true)) < 0.05] = (true[0] + 3) % 10  # a few misfit images
    predictions = {}
    for perturbation in perturbations:
        count = len(LEVELS[perturbation])
        flip = rng.integers(1, count + 1, size=len(true))  # count: never
        flip[mislabelled] = rng.integers(1, count, size=k)
        grid = np.arange(count)[:, None]
        predictions[perturbation] = np.where(grid >= flip, (at_zero + 1) % 10, at_zero).astype(np.uint8)
    return {"true": true, "assigned": assigned, "mislabelled": mislabelled, "k": k} | {
        "predictions": predictions
    }


def write_study(
    out: Path, *, perturbations: Sequence[str] = ("blur",), old: bool = False, runs_probe_id: bool = True
) -> Path:
    """A study folder (README "Outputs") of synthetic runs: rates 0, 5 % and 10 %, seeds 0 and 1, 80 clean
    and 40 test images. `old`: the format written before perturbations (blur only): curves.csv's `sigma`,
    flips.csv's `flip_sigma`, no perturbation or probe_id columns, predictions.npz's `sigmas`; runs.csv
    names the blur probe when `runs_probe_id`, otherwise the probe is found by its grid and images."""
    assert not old or tuple(perturbations) == ("blur",)
    runs, all_curves, all_flips = [], [], []
    for rate in STUDY_RATES:
        for seed in STUDY_SEEDS:
            keys = FAMILY_KEYS | {"rate": rate, "seed": seed}
            made = _synthetic_run(rate, seed, perturbations)
            run_id = f"run-{round(1000 * rate)}-{seed}"
            n_train = N_CLEAN + made["k"]
            train = np.arange(len(made["true"])) < n_train
            clean = train & ~made["mislabelled"]
            groups = {"mislabelled": made["mislabelled"], "clean": clean, "test": ~train}
            probe_ids = {}
            for perturbation, predictions in made["predictions"].items():
                levels = np.array(LEVELS[perturbation])
                probe_id = probe_ids[perturbation] = f"probe-{perturbation}-{len(levels)}"
                folder = out / "runs" / run_id / probe_id
                folder.mkdir(parents=True)
                grid = {"sigmas" if old else "levels": levels}
                np.savez(
                    folder / "predictions.npz",
                    **grid,
                    train=predictions[:, train],
                    test=predictions[:, ~train],
                    train_index=np.arange(n_train),
                    test_index=np.arange(N_TEST),
                )
                digest = hashlib.sha256((folder / "predictions.npz").read_bytes()).hexdigest()
                record = {"files": {"predictions.npz": digest}}
                record |= {} if old else {"perturbation": perturbation}
                (folder / "probe.json").write_text(json.dumps(record))
                table = curves(
                    predictions=predictions,
                    levels=levels,
                    true_labels=made["true"],
                    assigned_labels=made["assigned"],
                    groups=groups,
                )
                flips = pd.DataFrame(
                    {
                        "split": np.where(train, "train", "test"),
                        "index": np.r_[np.arange(n_train), np.arange(N_TEST)],
                        "true_label": made["true"],
                        "assigned_label": made["assigned"],
                        "mislabelled": made["mislabelled"],
                        "prediction_at_0": predictions[0],
                        "flip_level": np.r_[levels, np.nan][flip_positions(predictions)],
                    }
                )
                if old:
                    all_curves.append(table.rename(columns={"level": "sigma"}).assign(**keys))
                    all_flips.append(flips.rename(columns={"flip_level": "flip_sigma"}).assign(**keys))
                else:
                    marks = {"perturbation": perturbation, "probe_id": probe_id}
                    all_curves.append(table.assign(**keys, **marks))
                    all_flips.append(flips.assign(**keys, **marks))
            runs.append(
                keys
                | {"n_train": n_train, "n_test": N_TEST, "n_mislabelled": made["k"], "schedule": "full"}
                | {"epochs": 20, "first_target_epoch": 15, "final_lr": 1e-6, "reached_target": True}
                | {"train_acc": 0.9995, "mislabelled_train_acc": 0.99, "test_acc": 0.95, "run_id": run_id}
                | ({"probe_id": probe_ids.get("blur", "")} if runs_probe_id else {})
            )
    out.mkdir(parents=True, exist_ok=True)
    config = {"preset": "synthetic", "config": {"target_acc": 0.999}, "command": ["write_study"]}
    (out / "config.json").write_text(json.dumps(config))
    pd.DataFrame(runs).to_csv(out / "runs.csv", index=False)
    pd.concat(all_curves).to_csv(out / "curves.csv", index=False)
    pd.concat(all_flips).to_csv(out / "flips.csv", index=False)
    return out


PER_RUN_TABLES = ("image_curves", "summaries", "gap_adjusted", "roughness")


@pytest.mark.parametrize("runs_probe_id", [True, False], ids=["runs.csv names the probe", "found by grid"])
def test_tables_written_before_perturbations_load_as_blur(tmp_path: Path, runs_probe_id: bool) -> None:
    old = load_study(write_study(tmp_path / "old", old=True, runs_probe_id=runs_probe_id))
    new = load_study(write_study(tmp_path / "new"))
    assert len(old.images) == len(STUDY_RATES) * len(STUDY_SEEDS)
    assert {run.perturbation for run in old.images} == {"blur"}
    for before, now in zip(old.images, new.images, strict=True):
        assert before.keys == now.keys
        np.testing.assert_array_equal(before.levels, LEVELS["blur"])
        np.testing.assert_array_equal(before.predictions, now.predictions)
    assert {"level", "perturbation"} <= set(old.curves.columns) and "sigma" not in old.curves
    assert "flip_level" in old.flips and (old.flips["perturbation"] == "blur").all()
    tables, expected = analyse(old, n_bootstrap=20), analyse(new, n_bootstrap=20)
    for name, table in tables.items():  # the same analysis, whichever format the data came in
        pd.testing.assert_frame_equal(table, expected[name], obj=name)
    for name in PER_RUN_TABLES:
        assert (tables[name]["perturbation"] == "blur").all(), name


def test_a_probe_of_another_perturbation_is_not_taken_for_blur(tmp_path: Path) -> None:
    """Tables that name no probe: a probe of the same run on the same grid and images, but of another
    perturbation (its probe.json says so), is passed over."""
    out = write_study(tmp_path / "old", old=True, runs_probe_id=False)
    for record in (out / "runs").glob("*/probe-blur-5/probe.json"):
        record.write_text(json.dumps(json.loads(record.read_text()) | {"perturbation": "noise"}))
    with pytest.raises(FileNotFoundError, match="no run"):
        load_study(out)


@pytest.fixture(scope="module")
def two_perturbations(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict]:
    """A study probed under blur and noise, its analysis, and the analysis of the same study with blur
    alone."""
    both = write_study(tmp_path_factory.mktemp("two") / "out", perturbations=("blur", "noise"))
    alone = write_study(tmp_path_factory.mktemp("one") / "out", perturbations=("blur",))
    return both, analyse(load_study(both), n_bootstrap=50), analyse(load_study(alone), n_bootstrap=50)


def test_every_table_is_per_perturbation_and_never_mixes_them(two_perturbations: tuple) -> None:
    _, tables, blur_alone = two_perturbations
    for name in PER_RUN_TABLES:
        columns = list(tables[name].columns)
        assert columns[columns.index("seed") + 1] == "perturbation", name  # right after the run keys
    for name, table in tables.items():
        if name in ("training", "starting_gap"):  # per run: the unperturbed model's
            assert "perturbation" not in table and len(table) == len(STUDY_RATES) * len(STUDY_SEEDS)
            continue
        if name == "robustness":  # test accuracy under attack: neither perturbation is an attack
            assert table.empty
            continue
        if name == "across_widths":  # one width: nothing to compare, but its columns name the perturbation
            assert table.empty and "perturbation" in table
            continue
        assert set(table["perturbation"]) == {"blur", "noise"}, name
        # blur's rows are exactly the tables of the study probed with blur alone: nothing pooled, and its
        # random draws do not depend on the other perturbation
        blur = table[table["perturbation"] == "blur"].reset_index(drop=True)
        pd.testing.assert_frame_equal(blur, blur_alone[name], obj=name)
    curves = tables["image_curves"]
    for perturbation, levels in LEVELS.items():
        assert sorted(curves.loc[curves["perturbation"] == perturbation, "level"].unique()) == list(levels)
    by_rate = tables["rate_summaries"]
    assert not by_rate.duplicated(["perturbation", "subset", "group", "summary", "rate"]).any()
    per_perturbation = by_rate.groupby("perturbation").size()
    assert per_perturbation["blur"] == per_perturbation["noise"]
    assert len(tables["gap_overall"]) == 2
    assert len(tables["transitions"]) == 2 * len(blur_alone["transitions"])
    # the fit fraction is the unperturbed model's: the same rows under each perturbation
    values = tables["run_values"]
    fit = values[values["summary"] == "fit_fraction"]
    blur_fit, noise_fit = (
        fit[fit["perturbation"] == p].drop(columns="perturbation").reset_index(drop=True)
        for p in ("blur", "noise")
    )
    pd.testing.assert_frame_equal(blur_fit, noise_fit)
