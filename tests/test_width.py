"""The width experiment: threshold and peak analysis (simulated curves with and without a peak), the RFF
reproduction of Belkin et al. on a tiny subset, and `overparam width --preset smoke` end to end, cached on a
second call."""

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from overparam import registry
from overparam.cli import main
from overparam.data import load_split
from overparam.experiments.width import analysis, command, steps
from overparam.experiments.width.belkin import rff_sweep
from overparam.experiments.width.experiment import EXPERIMENT
from overparam.mislabel import class_balanced_subset

WIDTHS = (1, 2, 4, 8, 16, 32, 64)


def _runs(*, rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    frame["parameters"] = frame["width"] * 100
    frame["parameters_per_image"] = frame["width"] / 10
    return frame


def simulated(*, replicates: int, seeds: int, peak: float, rng: np.random.Generator) -> pd.DataFrame:
    """Per replicate (its own `dataset`) and seed: a test error linear in log2 width plus seed noise (sd 0.01)
    and `peak` added at width 8, where every seed first fits all its labels."""
    rows = []
    for replicate in range(replicates):
        for seed in range(seeds):
            for width in WIDTHS:
                error = 0.2 - 0.02 * np.log2(width) + rng.normal(0, 0.01) + (peak if width == 8 else 0.0)
                rows.append(
                    {"dataset": f"sim{replicate}", "model": "mlp", "rate": 0.1, "seed": seed, "width": width}
                    | {"train_acc": 1.0 if width >= 8 else 0.9, "test_error": error}
                )
    return _runs(rows=rows)


def _detected(runs: pd.DataFrame) -> np.ndarray:
    peaks = analysis.peaks(runs, analysis.seed_thresholds(runs))
    return peaks.loc[peaks["measure"] == "test_error", "peak"].to_numpy()


def test_a_known_peak_is_detected_and_flat_curves_give_about_five_percent_false_positives() -> None:
    rng = np.random.default_rng(0)
    assert _detected(simulated(replicates=50, seeds=3, peak=0.05, rng=rng)).mean() >= 0.9
    flat = _detected(simulated(replicates=400, seeds=3, peak=0.0, rng=rng))
    assert len(flat) == 400 and 0.02 <= flat.mean() <= 0.09


def test_the_peak_test_and_its_detectable_size() -> None:
    found = analysis.peak_test(np.array([0.04, 0.06, 0.05]))
    assert found["k"] == 3 and found["mean"] == pytest.approx(0.05)
    assert found["p_value"] < 0.01 and found["low"] < 0.05 < found["high"]
    # (t_{0.95,2} + t_{0.8,2}) * sd / sqrt(3), sd = 0.01
    assert found["detectable"] == pytest.approx((2.919986 + 1.060660) * 0.01 / np.sqrt(3), rel=1e-5)
    assert np.isnan(analysis.peak_test(np.array([0.1]))["p_value"])


def test_the_two_sided_change_test_finds_a_known_change_of_the_blur_gap_and_keeps_its_size() -> None:
    """A blur gap that drops by 0.1 at the threshold width (either way is a change) is found; a flat one is
    rejected about 5 % of the time."""
    rng = np.random.default_rng(1)

    def detected(change: float, replicates: int) -> np.ndarray:
        runs = simulated(replicates=replicates, seeds=3, peak=0.0, rng=rng)
        runs["blur_gap"] = 0.6 + rng.normal(0, 0.03, len(runs)) - np.where(runs["width"] == 8, change, 0.0)
        found = analysis.peaks(runs, analysis.seed_thresholds(runs))
        gap = found[found["measure"] == "blur_gap"]
        assert (gap["alternative"] == "two-sided").all()
        return gap["peak"].to_numpy()

    assert detected(0.15, 50).mean() >= 0.8
    flat = detected(0.0, 400)
    assert 0.02 <= flat.mean() <= 0.09


def test_the_change_test_is_two_sided_and_drops_seeds_without_a_value() -> None:
    down = analysis.peak_test(np.array([-0.04, -0.06, -0.05, np.nan]), alternative="two-sided")
    up = analysis.peak_test(np.array([0.04, 0.06, 0.05]), alternative="two-sided")
    assert down["k"] == 3 and up["p_value"] < 0.05
    assert down["p_value"] == pytest.approx(up["p_value"])
    one_sided = analysis.peak_test(np.array([0.04, 0.06, 0.05]))
    assert up["p_value"] == pytest.approx(2 * one_sided["p_value"])
    # (t_{0.975,2} + t_{0.8,2}) * sd / sqrt(3), sd = 0.01
    assert up["detectable"] == pytest.approx((4.302653 + 1.060660) * 0.01 / np.sqrt(3), rel=1e-5)


def test_blur_auroc_of_a_hand_made_probe() -> None:
    # mislabelled flip at sigma 0.5 and 1 and one never; clean at 1, 2 and never (NaN) twice
    flips = pd.DataFrame(
        {
            "split": ["train"] * 7 + ["test"],
            "mislabelled": [True, True, True, False, False, False, False, False],
            "flip_level": [0.5, 1.0, np.nan, 1.0, 2.0, np.nan, np.nan, 0.1],
        }
    )
    # pairs (mislabelled, clean) where the mislabelled flips first: 0.5 beats all 4; 1.0 beats 3 and ties 1;
    # never ties the 2 never-flipped: (4 + 3 + 0.5 + 0 + 2 * 0.5) / 12
    assert steps.blur_auroc(flips, np.array([0, 0.5, 1, 2])) == pytest.approx(8.5 / 12)
    assert np.isnan(steps.blur_auroc(flips[~flips["mislabelled"]], np.array([0, 1])))


def test_thresholds_of_a_hand_made_table() -> None:
    fit = {  # seed -> train_acc per width 1, 2, 4, 8
        0: (0.5, 0.99, 0.9995, 1.0),
        1: (0.5, 0.999, 1.0, 1.0),
        2: (0.5, 0.9, 0.99, 0.9991),
    }
    rows = [
        {"dataset": "mnist", "model": "mlp", "rate": 0.1, "seed": seed, "width": width}
        | {"train_acc": acc, "test_error": 0.1}
        for seed, accs in fit.items()
        for width, acc in zip((1, 2, 4, 8), accs, strict=True)
    ]
    runs = _runs(rows=rows)
    per_seed = analysis.seed_thresholds(runs)
    assert per_seed["threshold"].tolist() == [4, 2, 8]
    summary = analysis.thresholds(per_seed).iloc[0]
    assert summary["threshold"] == pytest.approx(4.0)  # 2 ** mean(2, 1, 3)
    assert summary["threshold_low"] < 4 < summary["threshold_high"] and summary["seeds_reached"] == 3
    assert (summary["threshold_min"], summary["threshold_max"]) == (2, 8)
    differences = analysis.peak_differences(runs, per_seed)
    assert differences["seed"].tolist() == [0, 1]  # seed 2's threshold is the grid's last width
    never = runs.assign(train_acc=np.where(runs["seed"] == 2, 0.5, runs["train_acc"]))
    summary = analysis.thresholds(analysis.seed_thresholds(never)).iloc[0]
    assert summary["seeds_reached"] == 2 and np.isnan(summary["threshold"])


def test_rff_test_loss_peaks_at_the_interpolation_threshold(data_root: Path) -> None:
    torch.manual_seed(0)
    chosen = []
    for split, size in (("train", 300), ("test", 1000)):
        images, labels = load_split(dataset="mnist", split=split, data_dir=data_root, download=False)
        index = class_balanced_subset(labels=labels.numpy(), size=size, dataset="mnist", split=split, seed=0)
        chosen.append((images[index].flatten(1).double() / 255, labels[index]))
    (train_x, train_y), (test_x, test_y) = chosen
    table = rff_sweep(
        train_images=train_x,
        train_labels=train_y,
        test_images=test_x,
        test_labels=test_y,
        feature_counts=(75, 300, 1200),
        sigma=5.0,
        seed=0,
    ).set_index("n_features")
    assert table.loc[300, "test_loss"] > max(table.loc[75, "test_loss"], table.loc[1200, "test_loss"])
    assert table.loc[300, "train_loss"] < 1e-12 and table.loc[1200, "train_loss"] < 1e-12  # interpolation
    assert table.loc[75, "train_loss"] > 0.1


def _width(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return command.run(parser.parse_args(argv))


def test_smoke_run_writes_tables_figure_and_report_and_is_cached(data_root: Path, tmp_path: Path) -> None:
    out, store = tmp_path / "out", tmp_path / "store"
    argv = ["--preset", "smoke", "--out", str(out), "--store", str(store), "--data-dir", str(data_root)]
    assert _width([*argv, "--no-download"]) == 0
    first = json.loads((out / "config.json").read_text())
    assert first["steps"]["failed"] == 0 and first["steps"]["done"] > 0 and "environment" in first
    runs = pd.read_csv(out / "width_runs.csv")
    assert len(runs) == 12 and runs["test_loss"].notna().all() and "blur_gap" in runs
    with_mislabels = runs[runs["rate"] > 0]
    assert (
        with_mislabels["blur_auroc"].between(0, 1).all()
        and runs.loc[runs["rate"] == 0, "blur_auroc"].isna().all()
    )
    assert (runs.groupby("width")["parameters"].first().diff().dropna() > 0).all()
    for name in ("width_curves", "thresholds", "peaks", "threshold_per_seed", "belkin"):
        assert len(pd.read_csv(out / f"{name}.csv"))
    for figure in ("width_sweep", "belkin_rff"):
        assert (out / "figures" / f"{figure}.png").exists() and (out / "figures" / f"{figure}.svg").exists()
    report = (out / "report.html").read_text()
    assert "Random Fourier features" in report and "Test error and memorisation against size" in report
    assert "mnist, mlp, rate 0.1" in report
    before = (out / "width_runs.csv").read_bytes()
    assert _width(argv) == 0  # every step is in the store now
    second = json.loads((out / "config.json").read_text())
    assert second["steps"]["done"] == 0 and second["steps"]["cached"] == first["steps"]["done"]
    assert (out / "width_runs.csv").read_bytes() == before


def test_the_resnet_cpu_preset_shares_its_trainings_with_the_blur_studys_quick_preset() -> None:
    from overparam.config import resolve
    from overparam.experiments.width.settings import width_config

    sweep = width_config(preset="quick-resnet")
    assert sweep.parts == ("sweep",) and [run.width for run in sweep.runs()][::9] == [1, 2, 4, 8, 16, 32]
    shared = {run for run in sweep.runs() if run.rate in (0.0, 0.1)}
    study = {
        run
        for width in (1, 2, 4, 8, 16, 32)
        for run in resolve(preset="quick", overrides={"width": width}).runs()
    }
    assert len(shared) == 36 and shared <= study


def test_the_command_is_registered(capsys: pytest.CaptureFixture[str]) -> None:
    with registry.registered(EXPERIMENT), pytest.raises(SystemExit):
        main(["--help"])
    assert "width" in capsys.readouterr().out
