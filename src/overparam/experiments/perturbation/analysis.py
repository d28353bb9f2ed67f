"""Statistics of a finished study (PROTOCOL step 6), as tidy tables: one observation per row, with the run
key columns where they apply. Everything is computed from the study's tables and saved predictions; nothing
is retrained or re-probed. `analyse` makes every table; report.py writes them to OUT/analysis/.

A run is probed under one or more perturbations (overparam.perturb: blur, noise, ...), each on its own grid of
levels in its own unit (blur: sigma in pixels); level 0 is the unperturbed image for every perturbation. Every
per-run table has a `perturbation` column after the run's key columns, and nothing is ever pooled over
perturbations, except the starting gap, which is the unperturbed model's (`starting_gap`).

Conventions: intervals are 95 %; the "changed" outcome of an image at level s is that its prediction differs
from its own prediction at level 0, and its flip level is the first grid level where that happens (never
flipped on the grid = right-censored at the largest level).

Tables written before perturbations (a `sigma` column, `flip_sigma`, no `perturbation`, predictions.npz with
`sigmas`) are read as perturbation "blur".
"""

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import CensoredData, logrank

from overparam.probe import GROUPS, flip_positions
from overparam.results import KEYS, PERTURBATION, RunImages, Study, numbered, run_keys, with_rate_percent
from overparam.stats import Z95, add_wilson_columns, wilson_interval
from overparam.store.files import with_keys

log = logging.getLogger(__name__)

SUMMARIES = ("auc", "half_level")
TRAINING_COLUMNS = (
    "schedule", "adversarial", "adversarial_epsilon", "epochs", "first_target_epoch", "final_lr",
    "reached_target", "train_acc", "mislabelled_train_acc", "test_acc",
)  # fmt: skip


# --- the starting gap --------------------------------------------------------------------------------------


def ratio_interval(
    *, errors_a: np.ndarray, n_a: np.ndarray, errors_b: np.ndarray, n_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ratio of two proportions (errors_a / n_a) / (errors_b / n_b) and its 95 % Katz log interval.

    Where a count of errors is 0 every count gets +0.5 (Haldane-Anscombe), so the ratio and its interval stay
    finite; NaN where both error counts are 0 or a group is empty. Elementwise over broadcast arrays.
    """
    a, na, b, nb = (np.asarray(x, dtype=float) for x in (errors_a, n_a, errors_b, n_b))
    undefined = ((a == 0) & (b == 0)) | (na == 0) | (nb == 0)
    correction = 0.5 * ((a == 0) | (b == 0))
    a, na, b, nb = a + correction, na + correction, b + correction, nb + correction
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(undefined, np.nan, (a / na) / (b / nb))
        half_width = Z95 * np.sqrt(1 / a - 1 / na + 1 / b - 1 / nb)
    return ratio, ratio * np.exp(-half_width), ratio * np.exp(half_width)


def starting_gap(curves: pd.DataFrame) -> pd.DataFrame:
    """Per run, the error rate at level 0 (prediction differs from the assigned label) of mislabelled and of
    clean images with Wilson intervals, and their ratio (mislabelled / clean) with a Katz interval.

    Level 0 is the unperturbed model under every perturbation, so this is per run, not per perturbation:
    from the level-0 rows of each run's first perturbation in `curves` (curves.csv, current format). Another
    perturbation whose level-0 rows count the same images but other agreements means the probes disagree
    about the unperturbed model: logged as a warning.
    """
    at_zero = _unperturbed(curves)
    columns: dict[str, Any] = {}
    for group in ("mislabelled", "clean"):
        rows = at_zero[at_zero["group"] == group].set_index(list(KEYS))
        n = rows["n"]
        errors = n - rows["agree_assigned"]
        fraction, low, high = wilson_interval(successes=errors.to_numpy(), trials=n.to_numpy())
        columns |= {
            f"n_{group}": n,
            f"errors_{group}": errors,
            f"error_{group}": pd.Series(fraction, n.index),
            f"error_{group}_low": pd.Series(low, n.index),
            f"error_{group}_high": pd.Series(high, n.index),
        }
    table = pd.DataFrame(columns)
    table["ratio"], table["ratio_low"], table["ratio_high"] = ratio_interval(
        errors_a=table["errors_mislabelled"],
        n_a=table["n_mislabelled"],
        errors_b=table["errors_clean"],
        n_b=table["n_clean"],
    )
    return with_rate_percent(table.reset_index())


def _unperturbed(curves: pd.DataFrame) -> pd.DataFrame:
    """The level-0 rows of `curves` of each run's first perturbation (see `starting_gap`)."""
    at_zero = curves[curves["level"] == 0]
    first = at_zero.groupby(list(KEYS), sort=False)[PERTURBATION].transform("first")
    chosen, others = at_zero[at_zero[PERTURBATION] == first], at_zero[at_zero[PERTURBATION] != first]
    if len(others):
        on = [*KEYS, "group", "n"]
        both = others.merge(chosen[[*on, "agree_assigned"]], on=on, suffixes=("", "_first"))
        differ = both[both["agree_assigned"] != both["agree_assigned_first"]]
        for row in differ.drop_duplicates([*KEYS, PERTURBATION]).itertuples(index=False):
            log.warning(
                "rate %s seed %s: the unperturbed predictions of its %s probe differ from its other probe's "
                "(curves.csv, level 0); the starting gap uses the first",
                row.rate,
                row.seed,
                getattr(row, PERTURBATION),
            )
    return chosen


# --- per-image summaries and their bootstrap ---------------------------------------------------------------


def changed_areas(predictions: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """[N] area under each image's changed indicator over the level (trapezoid) divided by the level range:
    the fraction of the range where it is changed. Their mean is the area under the group's changed-fraction
    curve."""
    changed = (predictions != predictions[0]).astype(float)
    return np.trapezoid(changed, levels, axis=0) / (levels[-1] - levels[0])


def half_level(flipped: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Level at which half the images have flipped, linearly interpolated on the grid; NaN if never.

    flipped: [..., L] fraction of images whose flip level is <= each grid level (0 at level 0).
    """
    reached = flipped >= 0.5
    after = np.maximum(reached.argmax(axis=-1), 1)[..., None]
    low, high = (np.take_along_axis(flipped, after - step, axis=-1)[..., 0] for step in (1, 0))
    with np.errstate(invalid="ignore", divide="ignore"):
        position = after[..., 0] - 1 + (0.5 - low) / (high - low)
    return np.where(reached.any(axis=-1), np.interp(position, np.arange(len(levels)), levels), np.nan)


@dataclass(frozen=True)
class Bootstrap:
    """A curve's summaries (see `summarise_images`) and their bootstrap replicates [B]."""

    n: int
    auc: float
    half_level: float
    auc_draws: np.ndarray
    half_level_draws: np.ndarray  # +inf where half is not reached


def summarise_images(
    *,
    positions: np.ndarray,
    areas: np.ndarray,
    levels: np.ndarray,
    n_bootstrap: int,
    rng: np.random.Generator,
) -> Bootstrap:
    """Area under the changed-fraction curve (mean of `areas`) and half-flip level of a group of images,
    with `n_bootstrap` nonparametric bootstrap replicates over images.

    Both summaries depend on an image only through its (flip position, area) pair, so drawing multinomial
    counts of the distinct pairs is the same resampling as drawing images with replacement, at a cost that
    does not grow with the number of images.
    """
    n, steps = len(areas), len(levels)
    pairs, counts = np.unique(np.c_[positions, areas], axis=0, return_counts=True)
    draws = rng.multinomial(n, counts / n, size=n_bootstrap)  # [B, U]
    by_position = np.eye(steps + 1)[pairs[:, 0].astype(int)]  # [U, S + 1]

    def halves(weights: np.ndarray) -> np.ndarray:
        return half_level(np.cumsum(weights @ by_position, axis=-1)[..., :steps] / n, levels)

    return Bootstrap(
        n=n,
        auc=float(areas.mean()),
        half_level=float(halves(counts)),
        auc_draws=draws @ pairs[:, 1] / n,
        half_level_draws=np.nan_to_num(halves(draws), nan=np.inf),
    )


def _interval(draws: np.ndarray) -> tuple[float, float, float]:
    """Percentile interval of bootstrap draws and the se it implies, (high - low) / 3.92; inf if unbounded."""
    low, high = np.quantile(draws, [0.025, 0.975], method="inverted_cdf")
    if np.isinf(high):  # more than 2.5 % of resamples never reach half: the interval is open above
        return float(low), float(high), np.inf
    return float(low), float(high), float((high - low) / (2 * Z95))


def _subsets(run: RunImages) -> list[tuple[str, str, np.ndarray]]:
    """(subset, group, mask [N]) of every non-empty image set of a run: each group ("all"), and the
    training groups restricted to images fit at level 0 ("fit")."""
    sets = [("all", group, run.group == group) for group in GROUPS]
    sets += [("fit", group, (run.group == group) & run.fit) for group in ("mislabelled", "clean")]
    return [(subset, group, mask) for subset, group, mask in sets if mask.any()]


def image_curves(study: Study) -> pd.DataFrame:
    """One row per run x perturbation x subset x group x level: n images, `changed` (prediction differs from
    level 0's) and `flipped` (changed at this or any smaller level: the flip-level distribution), each with
    its fraction and Wilson interval. Subset "all" reproduces curves.csv's changed counts; "fit" is the
    gap-adjusted set."""
    frames = []
    for run in study.images:
        changed = run.predictions != run.predictions[0]  # [L, N]
        flipped = np.logical_or.accumulate(changed, axis=0)
        for subset, group, mask in _subsets(run):
            frame = pd.DataFrame(
                {"subset": subset, "group": group, "level": run.levels, "n": int(mask.sum())}
                | {"changed": changed[:, mask].sum(axis=1), "flipped": flipped[:, mask].sum(axis=1)}
            )
            frames.append(with_keys(run_keys(run), add_wilson_columns(frame, ("changed", "flipped"))))
    return with_rate_percent(pd.concat(frames, ignore_index=True))


def curve_summaries(study: Study, *, n_bootstrap: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Summaries of every curve, and the gap-adjusted comparison of every run.

    Returns (summaries, gap_adjusted). summaries: one row per run x perturbation x subset x group x summary
    (subsets as in `image_curves`); summary "auc" is the area under the changed-fraction curve divided by
    the level range (a mean fraction), "half_level" the level (in the perturbation's unit) by which half the
    images have flipped, NaN and `censored` when never reached; each with its value, bootstrap percentile
    interval low/high and the standard error that interval implies. gap_adjusted: one row per run x
    perturbation comparing the fit mislabelled with the fit clean images: their counts and flipped counts,
    the difference in auc (mislabelled - clean) with its bootstrap interval, and a log-rank test of their
    flip levels (`_gap_adjusted`).

    Randomness: numpy default_rng([seed, the run's position among its perturbation's runs, subset, and for
    a perturbation other than blur a number of its name]) (`numbered`).
    """
    summaries, comparisons = [], []
    for (number, *code), run in numbered(study.images):
        positions, areas = flip_positions(run.predictions), changed_areas(run.predictions, run.levels)
        boots = {}
        for subset, group, mask in _subsets(run):
            rng = np.random.default_rng([seed, number, len(boots), *code])
            boot = summarise_images(
                positions=positions[mask],
                areas=areas[mask],
                levels=run.levels,
                n_bootstrap=n_bootstrap,
                rng=rng,
            )
            boots[subset, group] = boot
            for summary in SUMMARIES:
                value = getattr(boot, summary)
                low, high, se = _interval(getattr(boot, f"{summary}_draws"))
                row = {"subset": subset, "group": group, "n": boot.n, "summary": summary, "value": value}
                censored = bool(np.isnan(value))
                summaries.append(
                    run_keys(run) | row | {"low": low, "high": high, "se": se, "censored": censored}
                )
        fit = (boots.get(("fit", "mislabelled")), boots.get(("fit", "clean")))
        comparisons.append({**run_keys(run), **_gap_adjusted(run, positions, *fit)})
    return with_rate_percent(pd.DataFrame(summaries)), with_rate_percent(pd.DataFrame(comparisons))


def _gap_adjusted(
    run: RunImages, positions: np.ndarray, mislabelled: Bootstrap | None, clean: Bootstrap | None
) -> dict[str, Any]:
    """Compare fit mislabelled with fit clean images of one run.

    The flip level is a time to event on the level axis; an image that never flips on the grid is
    right-censored at the largest level. The log-rank test (scipy.stats.logrank) compares the two flip-level
    distributions over the whole grid and handles the censoring and the many ties of a discrete grid; its
    statistic is > 0 when mislabelled images flip earlier than equal hazards predict.
    """
    steps, row, samples = len(run.levels), {}, {}
    for group in ("mislabelled", "clean"):
        flips = positions[(run.group == group) & run.fit]
        flipped = flips < steps
        row[f"n_{group}"], row[f"flipped_{group}"] = len(flips), int(flipped.sum())
        samples[group] = CensoredData(
            uncensored=run.levels[flips[flipped]], right=np.full(len(flips) - flipped.sum(), run.levels[-1])
        )
    if mislabelled is None or clean is None or row["flipped_mislabelled"] + row["flipped_clean"] == 0:
        return row | dict.fromkeys(
            ("auc_difference", "auc_difference_low", "auc_difference_high", "logrank_statistic", "p_value"),
            np.nan,
        )
    low, high, _ = _interval(mislabelled.auc_draws - clean.auc_draws)
    test = logrank(samples["mislabelled"], samples["clean"])
    return row | {
        "auc_difference": mislabelled.auc - clean.auc,
        "auc_difference_low": low,
        "auc_difference_high": high,
        "logrank_statistic": float(test.statistic),
        "p_value": float(test.pvalue),
    }


# --- training and everything together ----------------------------------------------------------------------


def training(runs: pd.DataFrame) -> pd.DataFrame:
    """Per run: the schedule, stopping epoch, first epoch at the target, final learning rate, whether the
    target was reached, and the final accuracies (runs.csv's; columns a run of an older overparam lacks are
    left out)."""
    present = [column for column in TRAINING_COLUMNS if column in runs]
    return with_rate_percent(runs[[*KEYS, "n_mislabelled", *present]])


ATTACKS = ("fgsm", "pgd")


def robustness(study: Study) -> pd.DataFrame:
    """Per run x attack probed (fgsm, pgd) x level: the run's adversarial training (method and epsilon; none
    for a standard model), its clean test accuracy, and its test accuracy under that attack at that level
    (true labels): how adversarial training changes test performance. Empty without an attack probe."""
    curves = study.curves
    attacked = curves[curves["perturbation"].isin(ATTACKS) & (curves["group"] == "test")]
    if attacked.empty:
        columns = [*KEYS, "perturbation", "level", "robust_test_acc", "clean_test_acc", "adversarial"]
        return with_rate_percent(pd.DataFrame(columns=[*columns, "adversarial_epsilon"]))
    columns = [c for c in ("adversarial", "adversarial_epsilon") if c in study.runs]
    runs = study.runs[[*KEYS, "test_acc", *columns]]
    table = attacked[[*KEYS, "perturbation", "level", "agree_true_fraction"]].merge(runs, on=list(KEYS))
    table = table.rename(columns={"agree_true_fraction": "robust_test_acc", "test_acc": "clean_test_acc"})
    if "adversarial" not in table:  # runs trained before adversarial training existed
        table = table.assign(adversarial="none", adversarial_epsilon=0.0)
    return with_rate_percent(table)


def analyse(study: Study, *, n_bootstrap: int = 1000, seed: int = 0) -> dict[str, pd.DataFrame]:
    """Every analysis table of a study, by the name of its CSV file in OUT/analysis/."""
    from overparam.experiments.perturbation import (
        across_rates,
        smoothness,
    )  # both build on this module's tables

    summaries, gap_adjusted = curve_summaries(study, n_bootstrap=n_bootstrap, seed=seed)
    gap_at_zero = starting_gap(study.curves)
    values = across_rates.run_values(summaries, gap_adjusted, gap_at_zero)
    roughness = smoothness.roughness_test(study.images, seed=seed)
    transitions = across_rates.transitions(values, runs=study.runs, seed=seed)
    return {
        "training": training(study.runs),
        "starting_gap": gap_at_zero,
        "image_curves": image_curves(study),
        "summaries": summaries,
        "gap_adjusted": gap_adjusted,
        "run_values": values,
        "rate_summaries": across_rates.rate_summaries(values),
        "jumps": across_rates.jumps(values),
        "transitions": transitions,
        "across_widths": across_rates.across_widths(transitions),
        "gap_overall": across_rates.gap_overall(values),
        "roughness": roughness,
        "roughness_by_rate": smoothness.roughness_by_rate(roughness),
        "robustness": robustness(study),
    }
