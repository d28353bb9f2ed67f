"""The report's figures on small synthetic tables (no training): bands across seeds are t intervals of the
per-seed fractions (seeds are the replicates, not images), one seed gets its run's Wilson band and a note,
and every figure renders."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from scipy.stats import t as student_t

from overparam import figures, perturb
from overparam.experiments.perturbation.analysis import starting_gap
from overparam.probe import GROUPS
from overparam.stats import wilson_interval

SIGMAS = (0.0, 1.0, 2.0)
N = 200
FAMILY_KEYS = {"variant": "all", "dataset": "mnist", "model": "mlp", "width": 8, "train_size": 1000}


def make_curves(changed: dict[tuple[float, int], list[int]], n: int = N) -> pd.DataFrame:
    """curves.csv rows of one family under blur: for each (rate, seed), every group with `changed` counts
    per sigma (agreement counts n - changed); at rate 0 the mislabelled group is empty (n = 0), as in
    curves.csv."""
    rows = []
    for (rate, seed), counts in changed.items():
        for group in GROUPS:
            size = 0 if group == "mislabelled" and rate == 0 else n
            for sigma, count in zip(SIGMAS, counts, strict=True):
                count = min(count, size)
                rows.append(
                    FAMILY_KEYS
                    | {"rate": rate, "seed": seed, "perturbation": "blur", "group": group}
                    | {"level": sigma, "n": size}
                    | {"changed": count, "agree_assigned": size - count, "agree_true": size - count}
                )
    return pd.DataFrame(rows)


def at(table: pd.DataFrame, **where: object) -> pd.Series:
    """The one row of `table` matching `where`."""
    rows = table[np.logical_and.reduce([table[c] == v for c, v in where.items()])]
    assert len(rows) == 1
    return rows.iloc[0]


def legend_texts(figure: Figure) -> list[str]:
    return [text.get_text().replace("\n", " ") for legend in figure.legends for text in legend.get_texts()]


def test_three_seeds_band_is_t_interval_of_per_seed_fractions() -> None:
    curves = make_curves({(0.1, 0): [0, 40, 100], (0.1, 1): [0, 50, 110], (0.1, 2): [0, 60, 120]})
    band = figures.seed_band(curves, count="changed")
    row = at(band, rate=0.1, group="clean", level=1.0)
    fractions = np.array([40, 50, 60]) / N
    half = student_t.ppf(0.975, 2) * fractions.std(ddof=1) / np.sqrt(3)
    assert row["mean"] == pytest.approx(fractions.mean())
    assert row["low"] == pytest.approx(fractions.mean() - half)
    assert row["high"] == pytest.approx(fractions.mean() + half)
    assert row["n_seeds"] == 3
    assert row["basis"] == figures.ACROSS_SEEDS
    # the old band, a Wilson interval of the counts pooled over seeds (3 x 200 "independent" images), is far
    # narrower than the spread between the seeds allows
    _, pooled_low, pooled_high = wilson_interval(successes=np.array(150), trials=np.array(3 * N))
    assert pooled_high - pooled_low < (row["high"] - row["low"]) / 3


def test_band_is_clipped_to_fractions() -> None:
    band = figures.seed_band(
        make_curves({(0.1, s): [0, c, 0] for s, c in enumerate((0, 0, 60))}), count="changed"
    )
    row = at(band, rate=0.1, group="test", level=1.0)
    assert row["low"] == 0.0
    assert 0 < row["mean"] < row["high"] <= 1


def test_identical_seeds_give_zero_width_band() -> None:
    """Seeds that agree exactly leave no uncertainty across seeds; pooled counts gave a Wilson band here."""
    curves = make_curves({(0.1, seed): [0, 50, 100] for seed in range(3)})
    band = figures.seed_band(curves, count="changed")
    trained = band[band["group"] != "mislabelled"]
    assert (trained["basis"] == figures.ACROSS_SEEDS).all()
    np.testing.assert_allclose(trained["low"], trained["mean"])
    np.testing.assert_allclose(trained["high"], trained["mean"])
    row = at(band, rate=0.1, group="clean", level=1.0)
    assert row["mean"] == pytest.approx(0.25)


def test_one_seed_band_is_its_wilson_interval() -> None:
    curves = make_curves({(0.1, 0): [0, 30, 90], (0.0, 0): [0, 10, 40]})
    band = figures.seed_band(curves, count="changed")
    assert (band["basis"] == figures.WITHIN_ONE_MODEL).all()
    assert (band["n_seeds"] == 1).all()
    row = at(band, rate=0.1, group="clean", level=2.0)
    fraction, low, high = wilson_interval(successes=np.array(90), trials=np.array(N))
    assert (row["mean"], row["low"], row["high"]) == pytest.approx((fraction, low, high))
    # the empty group of rate 0 has no band
    assert not ((band["rate"] == 0.0) & (band["group"] == "mislabelled")).any()


def test_band_rejects_several_rows_per_seed() -> None:
    curves = make_curves({(0.1, 0): [0, 30, 90]})
    with pytest.raises(ValueError, match="several rows per seed"):
        figures.seed_band(pd.concat([curves, curves]), count="changed")


def drawn_band(axis: object, sigma: float) -> tuple[float, float]:
    """(low, high) of the first fill_between band of `axis` at `sigma`, from its polygon's vertices."""
    vertices = axis.collections[0].get_paths()[0].vertices
    values = vertices[np.isclose(vertices[:, 0], sigma), 1]
    return values.min(), values.max()


def test_curve_panels_draw_seed_bands_and_seed_lines() -> None:
    counts = {(0.1, 0): [0, 20, 100], (0.1, 1): [0, 50, 110], (0.1, 2): [0, 80, 120]}
    curves = make_curves(counts)
    colours = figures.rate_colours([0.1])
    figure = figures.curve_panels(
        curves=curves, outcome="changed", colours=colours, missed=set(), perturbation="blur"
    )
    band = figures.seed_band(curves, count="changed")
    axis = figure.axes[0]  # clean images
    assert axis.get_xlabel() == "blur sigma (pixels)"  # the registry's level name
    for sigma in SIGMAS:
        row = at(band, rate=0.1, group="clean", level=sigma)
        assert drawn_band(axis, sigma) == pytest.approx((row["low"], row["high"]))
    assert len(axis.lines) == 1 + 3  # the mean and each seed's own curve
    texts = legend_texts(figure)
    assert figures.SEEDS_NOTE in texts
    assert figures.ONE_SEED_NOTE not in texts
    assert not any("(one seed)" in text for text in texts)


def test_one_seed_is_noted_in_the_legend() -> None:
    curves = make_curves({(0.0, 0): [0, 5, 10], (0.1, 0): [0, 30, 90], (0.1, 1): [0, 40, 80]})
    colours = figures.rate_colours([0.0, 0.1])
    figure = figures.outcome_panels(
        curves=curves,
        outcomes=["changed"],
        groups=("mislabelled", "clean"),
        colours=colours,
        missed={0.1},
        perturbation="blur",
    )
    texts = legend_texts(figure)
    assert figures.ONE_SEED_NOTE in texts
    assert figures.SEEDS_NOTE in texts
    assert "0 % (one seed)" in texts
    assert "10 % (missed target)" in texts
    wilson = figures.seed_band(curves[curves["rate"] == 0.0], count="changed")
    row = at(wilson, group="clean", level=2.0)
    # rate 0's clean curve (grey, drawn first: groupby sorts rate then group) is its run's Wilson band
    assert drawn_band(figure.axes[0], 2.0) == pytest.approx((row["low"], row["high"]))


def test_every_figure_renders(tmp_path: Path) -> None:
    rates, seeds = (0.0, 0.05, 0.1), (0, 1)
    rng = np.random.default_rng(0)
    curves = make_curves(
        {(r, s): sorted(rng.integers(0, N, size=len(SIGMAS)).tolist()) for r in rates for s in seeds}
    )
    curves.loc[curves["level"] == 0, "changed"] = 0
    colours = figures.rate_colours(rates)
    image_curves = curves.assign(subset="all", flipped=curves["changed"])
    metrics = pd.DataFrame(
        [
            {
                "rate": r,
                "seed": s,
                "epoch": e,
                "train_acc": 0.5,
                "mislabelled_train_acc": 0.2,
                "test_acc": 0.4,
            }
            for r in rates
            for s in seeds
            for e in range(1, 4)
        ]
    )
    by_rate = pd.DataFrame(
        [
            {"rate": r, "group": g, "summary": m, "value": 0.5, "low": 0.4, "high": 0.6}
            for r in rates
            for g in GROUPS
            for m in ("auc", "half_level")
        ]
    )
    per_run = pd.concat([by_rate.assign(seed=s) for s in seeds])
    found = pd.DataFrame([{"group": "clean", "summary": "auc", "detected": True, "rate_low": 0.05}])
    made = {
        "training": figures.training_curves(metrics=metrics, colours=colours, missed={0.1}, target=0.9),
        "gap": figures.starting_gap(gap=starting_gap(curves), colours=colours),
        "summaries": figures.rate_summaries(
            by_rate=by_rate, per_run=per_run, found=found, colours=colours, perturbation="noise"
        ),
        "changed": figures.curve_panels(
            curves=curves, outcome="changed", colours=colours, missed=set(), perturbation="blur"
        ),
        "flipped": figures.curve_panels(
            curves=image_curves, outcome="flipped", colours=colours, missed=set(), perturbation="noise"
        ),
        "outcomes": figures.outcome_panels(
            curves=curves,
            outcomes=["changed", "agree_true"],
            groups=("test",),
            colours=colours,
            missed=set(),
            perturbation="not-registered",
        ),
        "examples": figures.example_grid(
            images=rng.integers(0, 256, size=(2, 28, 28), dtype=np.uint8),
            sigmas=[0.0, 1.0],
            predictions=np.array([[1, 1], [2, 3]]),
            true_labels=[1, 2],
            assigned_labels=[1, 5],
            kinds=["clean", "mislabelled"],
            targets=[0.0, 1.0],
        ),
    }
    for name, figure in made.items():
        path = figures.save(figure, folder=tmp_path, name=name)
        assert path.stat().st_size > 0
        assert (tmp_path / f"{name}.svg").stat().st_size > 0
    noise = perturb.get("noise").level_name
    assert made["flipped"].axes[0].get_xlabel().replace("\n", " ") == noise  # wrapped to fit its panel
    assert made["flipped"].axes[0].get_ylabel() == "fraction flipped\n(changed at this or a smaller level)"
    assert made["summaries"].axes[1].get_ylabel().replace("\n", " ") == f"{noise} by which half have flipped"
    assert made["outcomes"].axes[0].get_xlabel() == "level"  # a name the registry does not know


def test_axis_labels_come_from_the_registry() -> None:
    for name, perturbation in perturb.PERTURBATIONS.items():
        assert figures.level_label(name) == perturbation.level_name
    assert figures.level_label("blur") == "blur sigma (pixels)"
    assert figures.level_label("not-registered") == "level"
    assert figures.outcome_label("changed", "blur") == "fraction changed\n(prediction differs from sigma 0's)"
    assert figures.summary_label("half_level", "blur") == "blur sigma (pixels)\nby which half have flipped"
