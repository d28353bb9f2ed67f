"""The memorisation experiment (`overparam memorisation`): the estimate and its standard error by hand, rank
correlations over seeds on synthetic scores with a known relation, the long-tail table, the removal comparison
on a simulated case, the choice of removed images, and the command end to end on the smoke preset."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from overparam.cli import main
from overparam.config import ConfigError, resolve
from overparam.experiments.memorisation.analysis import RUN, memorisation_tables, verdict
from overparam.experiments.memorisation.estimate import (
    correlations,
    memorisation_counts,
    over_seeds,
    removal_differences,
    t_summary,
    tail,
)
from overparam.experiments.memorisation.settings import memorisation_config
from overparam.experiments.memorisation.steps import RemovalTraining


def test_the_estimate_and_its_standard_error_match_a_hand_computation() -> None:
    # 5 models, 2 images. Image 0: in models 0, 1, 2 (correct in 0, 1), out of 3, 4 (correct in neither).
    inside = np.array([[1, 0], [1, 1], [1, 1], [0, 1], [0, 0]], dtype=bool)
    correct = np.array([[1, 1], [1, 1], [0, 1], [0, 1], [0, 0]], dtype=bool)
    table = memorisation_counts(inside, correct)
    assert table[["n_in", "correct_in", "n_out", "correct_out"]].to_numpy().tolist() == [
        [3, 2, 2, 0],
        [3, 3, 2, 1],
    ]
    assert table["memorisation"].tolist() == pytest.approx([2 / 3, 0.5])
    se0 = np.sqrt((2 / 3) * (1 / 3) / 3 + 0)
    se1 = np.sqrt(0 + 0.5 * 0.5 / 2)
    assert table["se"].tolist() == pytest.approx([se0, se1])
    # Agresti-Caffo: one right and one wrong model added to each side; image 0: 3/5 in, 1/4 out
    assert table["se_adjusted"][0] == pytest.approx(np.sqrt(0.6 * 0.4 / 5 + 0.25 * 0.75 / 4))
    # never out of a subset: no estimate
    assert np.isnan(memorisation_counts(np.ones((3, 1), bool), np.ones((3, 1), bool))["memorisation"][0])


def test_t_summary_by_hand() -> None:
    found = t_summary(np.array([0.1, 0.3, 0.5]))
    # mean 0.3, sd 0.2, se 0.2 / sqrt(3); t(0.975, 2) = 4.302653, t(0.8, 2) = 1.060660
    half = 4.302653 * 0.2 / np.sqrt(3)
    assert found["mean"] == pytest.approx(0.3)
    assert (found["low"], found["high"]) == pytest.approx((0.3 - half, 0.3 + half), rel=1e-5)
    assert found["detectable"] == pytest.approx((4.302653 + 1.060660) * 0.2 / np.sqrt(3), rel=1e-5)
    assert np.isnan(t_summary(np.array([0.4]))["low"])


def _synthetic_scores(relation: float, seeds: int = 4, n: int = 400) -> pd.DataFrame:
    """Images whose blur flip level falls with memorisation (`relation` > 0) or is unrelated (0)."""
    rows = []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        memorised = rng.uniform(0, 1, n)
        flip = 3 - relation * 2 * memorised + rng.normal(0, 0.3, n)
        flip[:20] = np.nan  # never flipped on the grid: least sensitive
        mislabelled = np.arange(n) >= n - 40
        rows.append(
            pd.DataFrame(
                {
                    **dict.fromkeys(["dataset"], "mnist"),
                    "model": "lenet300",
                    "width": 100,
                    "train_size": n,
                    "rate": 0.1,
                    "seed": seed,
                    "index": np.arange(n),
                    "mislabelled": mislabelled,
                    "memorisation": memorised,
                    "blur_flip_level": flip,
                    "aum": rng.normal(size=n),
                }
            )
        )
    return pd.concat(rows, ignore_index=True)


def test_correlations_recover_a_known_relation_with_an_interval_over_seeds() -> None:
    related = correlations(_synthetic_scores(1.0), RUN)
    blur = related[(related["score"] == "blur_flip_level") & (related["group"] == "clean")]
    assert len(blur) == 4 and (blur["spearman"] > 0.5).all()  # oriented: sensitive = memorised -> positive
    summary = over_seeds(blur, ["rate", "group", "score"], "spearman").iloc[0]
    assert summary["low"] > 0.5 and summary["seeds"] == 4
    unrelated = correlations(_synthetic_scores(0.0), RUN)
    aum = over_seeds(unrelated[unrelated["score"] == "aum"], ["rate", "group", "score"], "spearman")
    clean = aum[aum["group"] == "clean"].iloc[0]
    assert clean["low"] < 0 < clean["high"] and abs(clean["mean"]) < 0.1


def test_the_tail_table_counts_the_fraction_above_each_threshold() -> None:
    frame = pd.DataFrame(
        {
            "dataset": "mnist",
            "model": "m",
            "width": 1,
            "train_size": 10,
            "rate": 0.0,
            "seed": 0,
            "mislabelled": False,
            "memorisation": [0.0] * 8 + [0.3, 0.9],
        }
    )
    row = tail(frame, RUN).iloc[0]
    assert (
        row["n"] == 10 and row["above_0.1"] == pytest.approx(0.2) and row["above_0.75"] == pytest.approx(0.1)
    )
    assert row["q50"] == 0.0


def test_the_removal_comparison_recovers_a_simulated_cost() -> None:
    rng = np.random.default_rng(0)
    rows = []
    for seed in range(5):
        base = 0.95 + rng.normal(0, 0.01)  # the seed effect cancels in the paired difference
        for removed, cost in (("top", 0.02), ("random", 0.0)):
            rows.append(
                {
                    "dataset": "mnist",
                    "model": "m",
                    "width": 1,
                    "train_size": 100,
                    "rate": 0.0,
                    "seed": seed,
                    "removed": removed,
                    "k": 10,
                    "repeat": 0,
                    "test_acc": base - cost + rng.normal(0, 0.002),
                }
            )
    paired = removal_differences(pd.DataFrame(rows), RUN)
    effect = t_summary(paired["difference"].to_numpy())
    assert effect["low"] < 0.02 < effect["high"] and effect["low"] > 0 and effect["p"] < 0.001


def test_top_removal_takes_the_most_memorised_and_random_any() -> None:
    run = resolve(preset="smoke", overrides={"model": "lenet300", "width": 8, "rates": (0.0,)}).runs()[0]
    memorisation = np.array([0.1, 0.9, np.nan, 0.5, 0.9, 0.0])
    assert RemovalTraining(run, "top", 3).chosen(memorisation).tolist() == [1, 3, 4]
    picked = RemovalTraining(run, "random", 3).chosen(memorisation)
    assert len(set(picked)) == 3 and picked.max() < 6
    assert RemovalTraining(run, "random", 3).step_id() != RemovalTraining(run, "top", 3).step_id()


def test_bad_settings_are_one_line_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least 100"):
        memorisation_config(preset="quick", models=16)
    assert main(["memorisation", "--preset", "quick", "--models", "16", "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("overparam: error:") and "at least 100" in error and "\n" not in error
    assert main(["memorisation", "--preset", "smoke", "--removal-k", "0", "--out", str(tmp_path)]) == 2


def test_the_command_runs_end_to_end_on_the_smoke_preset(placement: list[str], tmp_path: Path) -> None:
    assert main(["memorisation", "--preset", "smoke", "--rates", "0", *placement]) == 0
    out = tmp_path / "out"
    images = pd.read_csv(out / "memorisation_images.csv")
    assert len(images) == 2 * 200 and (images["models"] == 4).all()
    assert np.allclose(images["memorisation"], images["p_in"] - images["p_out"], equal_nan=True)
    assert ((images["n_in"] + images["n_out"]) == 4).all()
    removal = pd.read_csv(out / "memorisation_removal.csv")
    assert (
        sorted(removal["removed"]) == ["random", "random", "top", "top"] and (removal["n_train"] == 190).all()
    )
    tables = memorisation_tables(out)
    assert {
        "memorisation_correlation_by_rate",
        "memorisation_tail_by_rate",
        "memorisation_removal_effect",
    } <= set(tables)
    by_rate = pd.read_csv(out / "analysis" / "memorisation_correlation_by_rate.csv")
    assert set(by_rate["score"]) >= {
        "blur_flip_level",
        "noise_flip_level",
        "fgsm_flip_level",
        "margin_at_0",
        "aum",
    }
    assert (by_rate["seeds"] == 2).all()
    assert verdict(tables) and "Does the probe measure memorisation?" in (out / "report.html").read_text()
    assert "most memorised" in (out / "memorised.html").read_text()
