"""The report's figures (matplotlib, Agg backend). Every function draws one family of runs (one dataset,
model, width and training size), the curves of one perturbation at a time, and returns the figure; `save`
writes it as PNG and SVG.

Conventions shared by all figures: one colour per rate (`rate_colours`: a sequential colormap over the
sorted non-zero rates, the rate-0 control in grey); the perturbation's level on the x axis, labelled with its
`level_name` from the registry (`level_label`; blur: sigma in pixels); legends outside the axes; a rate with
a run that missed the training target is marked "(missed target)" in the legend.

Bands respect replication: seeds (trained models) are the replicates, not images, which every seed of a rate
shares. With k >= 2 seeds at a rate, a curve is the mean over seeds of each run's own fraction and its 95 %
band is mean +- t_{0.975, k-1} sd / sqrt(k) of those fractions, clipped to [0, 1] (`seed_band`); each seed's
own curve is drawn thinly beside it. With one seed the band is that run's Wilson interval: it reflects only
image sampling within one model, which the legend says ("one seed") and a legend note spells out.
"""

import textwrap
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator, NullFormatter, PercentFormatter
from scipy.stats import t as student_t

from overparam import perturb
from overparam.blur import blur, blur_matrices
from overparam.probe import GROUPS
from overparam.results import percent
from overparam.stats import wilson_interval
from overparam.store.files import write_atomic

Colours = dict[float, tuple[float, float, float, float]]
# What running text and short labels call a perturbation's level ("sigma 0", "half-flip sigma"); "level" for
# every perturbation not named here. Axis labels say more: the registry's level_name (`level_label`).
LEVEL_WORDS = {"blur": "sigma"}
GROUP_STYLE = {"mislabelled": "-", "clean": "--", "test": ":"}
GROUP_MARKER = {"mislabelled": "o", "clean": "s", "test": "^"}
OUTCOME_LABEL = {  # {word}: `level_word`
    "changed": "fraction changed\n(prediction differs from {word} 0's)",
    "flipped": "fraction flipped\n(changed at this or a smaller {word})",
    "agree_assigned": "fraction agreeing with\nthe assigned label",
    "agree_true": "fraction agreeing with\nthe true label",
}
ACROSS_SEEDS = "across seeds"  # seed_band's basis with k >= 2 seeds
WITHIN_ONE_MODEL = "within one model"  # its basis with one seed: the run's Wilson interval over images
ONE_SEED_NOTE = "one seed: band is within one model (images), not across models"
SEEDS_NOTE = "95 % band across seeds: mean +- t sd / sqrt(k); thin lines: each seed"
SUMMARY_LABEL = {  # {word}: `level_word`; {label}: `level_label`
    "auc": "area under changed-fraction\ncurve / {word} range",
    "half_level": "{label}\nby which half have flipped",
}


def level_label(perturbation: str) -> str:
    """The x-axis label of a perturbation's level: its registered `level_name` ("blur sigma (pixels)"), or
    "level" for a name the registry does not know (tables of a perturbation since removed)."""
    try:
        return perturb.get(perturbation).level_name
    except KeyError:
        return "level"


def axis_label(perturbation: str) -> str:
    """`level_label` wrapped to lines that fit under one panel ("noise standard deviation (pixel units, ...)"
    would run into its neighbour's)."""
    return textwrap.fill(level_label(perturbation), 34)


def level_word(perturbation: str) -> str:
    """What text calls a perturbation's level: "sigma" for blur, "level" otherwise (LEVEL_WORDS)."""
    return LEVEL_WORDS.get(perturbation, "level")


def outcome_label(outcome: str, perturbation: str) -> str:
    return OUTCOME_LABEL[outcome].format(word=level_word(perturbation))


def summary_label(summary: str, perturbation: str) -> str:
    return SUMMARY_LABEL[summary].format(word=level_word(perturbation), label=axis_label(perturbation))


def rate_colours(rates: Iterable[float]) -> Colours:
    """A colour per rate: viridis over the sorted non-zero rates (dark = low), grey for rate 0."""
    nonzero = sorted({float(r) for r in rates if r > 0})
    positions = np.linspace(0.0, 0.85, len(nonzero)) if len(nonzero) > 1 else [0.4] * len(nonzero)
    colours = {rate: tuple(colormaps["viridis"](p)) for rate, p in zip(nonzero, positions, strict=True)}
    return {0.0: (0.55, 0.55, 0.55, 1.0), **colours}


def _figure(
    rows: int, columns: int, *, size: tuple[float, float], **options: bool
) -> tuple[Figure, np.ndarray]:
    """A figure (constrained layout; no pyplot state, Agg renders it on save) and its axes [rows, columns]."""
    figure = Figure(figsize=size, layout="constrained")
    return figure, figure.subplots(rows, columns, squeeze=False, **options)


def save(figure: Figure, *, folder: Path, name: str) -> Path:
    """Write `folder/name.png` (150 dpi) and `folder/name.svg`; returns the PNG's path."""
    for suffix, options in (("svg", {}), ("png", {"dpi": 150})):
        write_atomic(
            folder / f"{name}.{suffix}",
            lambda temporary, suffix=suffix, options=options: figure.savefig(
                temporary, format=suffix, bbox_inches="tight", **options
            ),
        )
    return folder / f"{name}.png"


def seed_band(
    frame: pd.DataFrame, *, count: str, by: Sequence[str] = ("rate", "group", "level")
) -> pd.DataFrame:
    """Per `by`, the mean over seeds of each run's own fraction `count` / `n` and its 95 % band.

    frame: one row per seed within `by` (columns seed, n, `count` and `by`; one perturbation); rows with
    n = 0 are left out.
    Returns `by` and mean, low, high, n_seeds, basis: with k >= 2 seeds, mean +- t_{0.975, k-1} sd / sqrt(k)
    clipped to [0, 1], basis ACROSS_SEEDS; with one seed, the run's fraction and Wilson interval, basis
    WITHIN_ONE_MODEL (the images of one model, not the spread between models).
    """
    runs = frame[frame["n"] > 0]
    if runs.duplicated([*by, "seed"]).any():
        raise ValueError(f"several rows per seed within {list(by)}: select one family and subset first")
    runs = runs.assign(fraction=runs[count] / runs["n"])
    table = runs.groupby(list(by), as_index=False).agg(
        mean=("fraction", "mean"),
        sd=("fraction", "std"),
        n_seeds=("fraction", "size"),
        successes=(count, "first"),
        trials=("n", "first"),
    )
    k = table["n_seeds"].to_numpy()
    half = student_t.ppf(0.975, np.maximum(k - 1, 1)) * table["sd"].to_numpy() / np.sqrt(k)
    _, wilson_low, wilson_high = wilson_interval(successes=table["successes"], trials=table["trials"])
    single = k == 1
    table["low"] = np.where(single, wilson_low, np.clip(table["mean"] - half, 0.0, 1.0))
    table["high"] = np.where(single, wilson_high, np.clip(table["mean"] + half, 0.0, 1.0))
    table["basis"] = np.where(single, WITHIN_ONE_MODEL, ACROSS_SEEDS)
    return table[[*by, "mean", "low", "high", "n_seeds", "basis"]]


def _rate_handles(
    colours: Colours, rates: Iterable[float], missed: set[float], single: Iterable[float] = ()
) -> list[Line2D]:
    """A line per rate; "(missed target)" and "(one seed)" marked for the rates in `missed` and `single`."""
    single = set(single)
    return [
        Line2D(
            [],
            [],
            color=colours[r],
            lw=2,
            label=percent(r)
            + (" (missed target)" if r in missed else "")
            + (" (one seed)" if r in single else ""),
        )
        for r in sorted(set(rates))
    ]


def _band_handles(table: pd.DataFrame) -> list[Patch]:
    """Notes on the bands of a `seed_band` table: across seeds, and (if any rate has one) within one model."""
    notes = [(ACROSS_SEEDS, SEEDS_NOTE), (WITHIN_ONE_MODEL, ONE_SEED_NOTE)]
    return [
        Patch(color="0.5", alpha=0.15, label=note.replace(": ", ":\n", 1))
        for basis, note in notes
        if (table["basis"] == basis).any()
    ]


def _group_handles(groups: Iterable[str]) -> list[Line2D]:
    return [Line2D([], [], color="black", ls=GROUP_STYLE[g], label=g) for g in groups]


def _legend(figure: Figure, handles: Sequence[Line2D | Patch], title: str) -> None:
    figure.legend(handles=handles, title=title, loc="outside right upper", frameon=False)


def _band(
    axis: Axes, band: pd.DataFrame, runs: pd.DataFrame, count: str, colour: tuple, style: str = "-"
) -> None:
    """`band` (rows of `seed_band` of one curve) as a mean line and shaded band; with several seeds, each
    seed's own fraction (`runs`: the curve's rows, one per seed and level) as a thin line."""
    axis.fill_between(band["level"], band["low"], band["high"], color=colour, alpha=0.15, lw=0)
    axis.plot(band["level"], band["mean"], color=colour, ls=style, lw=1.5)
    if (band["n_seeds"] > 1).any():
        for _, run in runs[runs["n"] > 0].groupby("seed"):
            axis.plot(run["level"], run[count] / run["n"], color=colour, ls=style, lw=0.6, alpha=0.45)


def _one_seed_rates(table: pd.DataFrame) -> set[float]:
    return set(table.loc[table["basis"] == WITHIN_ONE_MODEL, "rate"])


def curve_panels(
    *,
    curves: pd.DataFrame,
    outcome: str,
    colours: Colours,
    missed: set[float],
    perturbation: str,
    groups: Sequence[str] = ("clean", "mislabelled", "test"),
) -> Figure:
    """One panel per group: `outcome`'s fraction vs the level of `perturbation`, a curve per rate with its
    band.

    curves: rows of curves.csv (or image_curves.csv) of one family and perturbation (and one subset), columns
    rate, seed, group, level, n, outcome; bands as `seed_band`.
    """
    table = seed_band(curves, count=outcome)
    figure, axes = _figure(1, len(groups), size=(4 * len(groups), 3.4), sharey=True)
    for axis, group in zip(axes[0], groups, strict=True):
        for rate, rows in table[table["group"] == group].groupby("rate"):
            runs = curves[(curves["group"] == group) & (curves["rate"] == rate)]
            _band(axis, rows, runs, outcome, colours[rate])
        axis.set(title=f"{group} images", xlabel=axis_label(perturbation), ylim=(-0.02, 1.02))
    axes[0, 0].set_ylabel(outcome_label(outcome, perturbation))
    handles = _rate_handles(colours, table["rate"], missed, _one_seed_rates(table)) + _band_handles(table)
    _legend(figure, handles, "mislabelling rate")
    return figure


def outcome_panels(
    *,
    curves: pd.DataFrame,
    outcomes: Sequence[str],
    groups: Sequence[str],
    colours: Colours,
    missed: set[float],
    perturbation: str,
) -> Figure:
    """One panel per outcome; in each, a curve per rate and group (line style per group) with its band
    (`seed_band`), against the level of `perturbation`. curves: as for `curve_panels`."""
    figure, axes = _figure(1, len(outcomes), size=(5.5 * len(outcomes), 4))
    shown = curves[curves["group"].isin(groups)]
    tables = {outcome: seed_band(shown, count=outcome) for outcome in outcomes}
    for axis, (outcome, table) in zip(axes[0], tables.items(), strict=True):
        for (rate, group), rows in table.groupby(["rate", "group"]):
            runs = shown[(shown["group"] == group) & (shown["rate"] == rate)]
            _band(axis, rows, runs, outcome, colours[rate], GROUP_STYLE[group] if len(groups) > 1 else "-")
        axis.set(
            xlabel=axis_label(perturbation), ylabel=outcome_label(outcome, perturbation), ylim=(-0.02, 1.02)
        )
    table = next(iter(tables.values()))  # every outcome has the same runs, hence the same seeds per rate
    handles = _rate_handles(colours, curves["rate"], missed, _one_seed_rates(table))
    if len(groups) > 1:
        handles += _group_handles(groups)
    handles += _band_handles(table)
    _legend(figure, handles, "rate / images" if len(groups) > 1 else "mislabelling rate")
    return figure


def trainings_side_by_side(
    *,
    curves: pd.DataFrame,
    trainings: Sequence[str],
    outcome: str,
    colours: Colours,
    perturbation: str,
    groups: Sequence[str] = ("mislabelled", "clean", "test"),
) -> Figure:
    """A row per training (standard, adversarial, ...), a panel per group: `outcome`'s fraction vs the level
    of `perturbation`, a curve per rate with its band (`seed_band`), on shared axes so rows compare.

    curves: rows of curves.csv of one perturbation with a `training` column naming each row's training (one
    of `trainings`), and rate, seed, group, level, n, `outcome`.
    """
    figure, axes = _figure(
        len(trainings), len(groups), size=(4 * len(groups), 3 * len(trainings)), sharex=True, sharey=True
    )
    bands = []
    for row, training in enumerate(trainings):
        shown = curves[curves["training"] == training]
        table = seed_band(shown, count=outcome)
        bands.append(table)
        for axis, group in zip(axes[row], groups, strict=True):
            for rate, rows in table[table["group"] == group].groupby("rate"):
                runs = shown[(shown["group"] == group) & (shown["rate"] == rate)]
                _band(axis, rows, runs, outcome, colours[rate])
            axis.set(title=f"{training}: {group} images", ylim=(-0.02, 1.02))
        axes[row, 0].set_ylabel(outcome_label(outcome, perturbation))
    for axis in axes[-1]:
        axis.set_xlabel(axis_label(perturbation))
    table = pd.concat(bands)
    handles = _rate_handles(colours, table["rate"], set(), _one_seed_rates(table)) + _band_handles(table)
    _legend(figure, handles, "mislabelling rate")
    return figure


def label_detection(*, by_rate: pd.DataFrame) -> Figure:
    """How well each label-error measurement finds the injected mislabels against the mislabelling rate:
    AUROC and average precision, a line per measurement with its 95 % t band over seeds (none with one seed).

    by_rate: rows of analysis/label_detection_by_rate.csv of one family (rate, measurement, auroc,
    auroc_low, auroc_high, average_precision, average_precision_low, average_precision_high).
    """
    figure, axes = _figure(1, 2, size=(11, 4))
    palette = colormaps["tab10"]
    rates = sorted(by_rate["rate"].unique())
    for number, (name, rows) in enumerate(by_rate.groupby("measurement", sort=False)):
        rows = rows.sort_values("rate")
        x, colour = [rates.index(rate) for rate in rows["rate"]], palette(number % 10)
        for axis, metric in zip(axes[0], ("auroc", "average_precision"), strict=True):
            axis.plot(x, rows[metric], marker="o", color=colour, label=name)
            axis.fill_between(
                x, rows[f"{metric}_low"], rows[f"{metric}_high"], color=colour, alpha=0.15, lw=0
            )
    for axis, label in zip(axes[0], ("AUROC", "average precision"), strict=True):
        _rate_axis(axis, rates)
        axis.set(ylabel=label, ylim=(-0.02, 1.02))
    axes[0, 0].axhline(0.5, color="0.6", lw=0.8, ls=":")  # a score that knows nothing
    handles, _ = axes[0, 0].get_legend_handles_labels()
    _legend(figure, handles, "measurement")
    return figure


def fit_panels(*, fit: pd.DataFrame, colours: Colours, value: str = "fit", row: str | None = None) -> Figure:
    """A panel per group (mislabelled and clean training images on their assigned labels, test images on
    their true labels) and per value of `row` (e.g. a lottery ticket's method): the
    mean over seeds of `value` against the fraction of weights remaining (log axis, denser to the right), a
    line per rate with its 95 % t band (`<value>_low`, `<value>_high`).

    fit: rows of one family with columns rate, group, remaining, `value` and its bounds (and `row`).
    """
    groups = [group for group in ("mislabelled", "clean", "test") if group in set(fit["group"])]
    rows = list(dict.fromkeys(fit[row])) if row else [None]
    figure, axes = _figure(len(rows), len(groups), size=(3.6 * len(groups), 2.9 * len(rows)), sharey=True)
    for number, name in enumerate(rows):
        chosen = fit if row is None else fit[fit[row] == name]
        for axis, group in zip(axes[number], groups, strict=True):
            for rate, lines in chosen[chosen["group"] == group].groupby("rate"):
                lines = lines.sort_values("remaining")
                axis.plot(lines["remaining"], lines[value], marker="o", ms=3, color=colours[rate])
                low, high = lines[f"{value}_low"], lines[f"{value}_high"]
                axis.fill_between(lines["remaining"], low, high, color=colours[rate], alpha=0.15, lw=0)
            axis.set(title=f"{group} images" + (f", {name}" if row else ""), ylim=(-0.02, 1.02))
            _remaining_axis(axis)
        axes[number, 0].set_ylabel("fraction right" if value == "fit" else value)
    for axis in axes[-1]:
        axis.set_xlabel("fraction of weights remaining")
    _legend(figure, _rate_handles(colours, fit["rate"], set()), "mislabelling rate")
    return figure


def _remaining_axis(axis: Axes) -> None:
    """A log axis of the fraction of weights remaining, labelled in per cent."""
    axis.set_xscale("log")
    axis.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=None))
    axis.xaxis.set_minor_formatter(NullFormatter())


def gap_panels(*, gaps: pd.DataFrame, colours: Colours) -> Figure:
    """A panel per perturbation (row) and ticket kind (column): mean over seeds of how much more often the
    mislabelled images change prediction than the clean ones (averaged over levels above 0) against the
    fraction of weights remaining, a line per rate with its 95 % t band.

    gaps: rows of analysis/ticket_gap.csv of one family.
    """
    methods, perturbations = list(dict.fromkeys(gaps["method"])), list(dict.fromkeys(gaps["perturbation"]))
    figure, axes = _figure(
        len(perturbations), len(methods), size=(3.4 * len(methods), 2.8 * len(perturbations)), sharey="row"
    )
    for row, perturbation in enumerate(perturbations):
        for axis, method in zip(axes[row], methods, strict=True):
            chosen = gaps[(gaps["method"] == method) & (gaps["perturbation"] == perturbation)]
            for rate, lines in chosen[chosen["rate"] > 0].groupby("rate"):
                lines = lines.sort_values("remaining")
                axis.plot(lines["remaining"], lines["gap"], marker="o", ms=3, color=colours[rate])
                low, high = lines["gap_low"], lines["gap_high"]
                axis.fill_between(lines["remaining"], low, high, color=colours[rate], alpha=0.15, lw=0)
            axis.axhline(0, color="0.6", lw=0.8)
            axis.set(title=f"{perturbation}, {method}")
            _remaining_axis(axis)
        axes[row, 0].set_ylabel("changed: mislabelled - clean")
    for axis in axes[-1]:
        axis.set_xlabel("fraction of weights remaining")
    _legend(figure, _rate_handles(colours, [r for r in gaps["rate"] if r > 0], set()), "mislabelling rate")
    return figure


def training_curves(*, metrics: pd.DataFrame, colours: Colours, missed: set[float], target: float) -> Figure:
    """Accuracy per epoch: on the assigned labels of all training images, of the mislabelled ones, and on
    the test set (true labels); a line per run, an x where a run ended short of the target."""
    panels = {
        "train_acc": "training images (assigned labels)",
        "mislabelled_train_acc": "mislabelled images (assigned labels)",
        "test_acc": "test images (true labels)",
    }
    figure, axes = _figure(1, 3, size=(13, 3.6))
    for axis, (column, title) in zip(axes[0], panels.items(), strict=True):
        for (rate, _seed), rows in metrics.groupby(["rate", "seed"]):
            axis.plot(rows["epoch"], rows[column], color=colours[rate], lw=1.3)
            if rate in missed:
                axis.plot(rows["epoch"].iloc[-1:], rows[column].iloc[-1:], "x", color=colours[rate], ms=8)
        axis.set(title=title, xlabel="epoch", ylabel="accuracy", ylim=(-0.02, 1.02))
    axes[0, 0].axhline(target, color="black", ls=":", lw=1)
    axes[0, 0].annotate(
        f"target {target:g}", (0.98, target - 0.02), xycoords=("axes fraction", "data"), ha="right", va="top"
    )
    for axis in axes[0]:
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    _legend(figure, _rate_handles(colours, metrics["rate"], missed), "mislabelling rate")
    return figure


def _rate_axis(axis: Axes, rates: Sequence[float]) -> None:
    """Rates as equally spaced categories (the design is a discrete set that includes 0)."""
    axis.set_xticks(range(len(rates)), [percent(r) for r in rates], rotation=45)
    axis.set_xlabel("mislabelling rate")


def _interval_points(
    axis: Axes, positions: np.ndarray, rows: pd.DataFrame, column: str, colours: Colours, marker: str
) -> None:
    """A marker per row at `column`, error bars to `<column>_low` / `_high` (none past an infinite one)."""
    for position, rate, value, low, high in zip(
        positions, rows["rate"], rows[column], rows[f"{column}_low"], rows[f"{column}_high"], strict=True
    ):
        error = [[max(value - low, 0)], [max(high - value, 0) if np.isfinite(high) else 0]]
        axis.errorbar(position, value, yerr=error, fmt=marker, color=colours[rate], ms=5, capsize=2)


def starting_gap(*, gap: pd.DataFrame, colours: Colours, zero: str = "level 0") -> Figure:
    """Error rate of the unperturbed model (prediction differs from the assigned label) of mislabelled and
    clean images per run with Wilson intervals, and their ratio with its Katz interval (log scale). `zero`
    names the unperturbed model in the axis label ("sigma 0" in a study of blur alone)."""
    rates = sorted(gap["rate"].unique())
    seeds = sorted(gap["seed"].unique())
    offset = {seed: 0.25 * (i - (len(seeds) - 1) / 2) / max(1, len(seeds)) for i, seed in enumerate(seeds)}
    positions = np.array([rates.index(r) + offset[s] for r, s in zip(gap["rate"], gap["seed"], strict=True)])
    figure, axes = _figure(1, 2, size=(11, 3.8))
    left, right = axes[0]
    for group, shift in (("mislabelled", -0.12), ("clean", 0.12)):
        keep = gap[f"error_{group}"].notna().to_numpy()
        column = f"error_{group}"
        _interval_points(left, positions[keep] + shift, gap[keep], column, colours, GROUP_MARKER[group])
    keep = gap["ratio"].notna().to_numpy()
    _interval_points(right, positions[keep], gap[keep], "ratio", colours, "D")
    right.axhline(1, color="black", lw=0.8, ls=":")
    right.set_yscale("log")
    # clean error rates are often 0 or near it: linear below 1e-4, logarithmic above
    left.set_yscale("symlog", linthresh=1e-4)
    left.set_ylim(bottom=0)
    left.set(ylabel=f"error rate at {zero}\n(vs assigned label)", title="error rate")
    right.set(ylabel="error rate ratio\nmislabelled / clean", title="starting gap")
    for axis in (left, right):
        _rate_axis(axis, rates)
    markers = [
        Line2D([], [], color="black", marker=GROUP_MARKER[g], ls="", label=g)
        for g in ("mislabelled", "clean")
    ]
    _legend(figure, _rate_handles(colours, rates, set()) + markers, "rate / images")
    return figure


def rate_summaries(
    *, by_rate: pd.DataFrame, per_run: pd.DataFrame, found: pd.DataFrame, colours: Colours, perturbation: str
) -> Figure:
    """Each curve summary vs rate: the mean over seeds with its interval (large markers, one line per group),
    each seed's value (small dots), and a vertical line where a transition was detected. The tables are one
    family's and `perturbation`'s."""
    rates = sorted(by_rate["rate"].unique())
    figure, axes = _figure(1, 2, size=(12, 4))
    for axis, summary in zip(axes[0], ("auc", "half_level"), strict=True):
        for group in GROUPS:
            rows = by_rate[(by_rate["summary"] == summary) & (by_rate["group"] == group)].sort_values("rate")
            positions = np.array([rates.index(r) for r in rows["rate"]])
            axis.plot(positions, rows["value"], color="0.6", ls=GROUP_STYLE[group], lw=1, zorder=1)
            intervals = rows.rename(columns={"low": "value_low", "high": "value_high"})
            _interval_points(axis, positions, intervals, "value", colours, GROUP_MARKER[group])
            seeds = per_run[(per_run["summary"] == summary) & (per_run["group"] == group)]
            axis.scatter(
                [rates.index(r) for r in seeds["rate"]], seeds["value"], s=6, color="black", zorder=3
            )
        for row in found[(found["summary"] == summary) & found["detected"]].itertuples(index=False):
            boundary = rates.index(row.rate_low) + 0.5
            axis.axvline(boundary, color="crimson", ls=GROUP_STYLE[row.group], lw=1.2)
            axis.annotate(f"transition ({row.group})", (boundary, 0.98), xycoords=("data", "axes fraction"))
        axis.set(ylabel=summary_label(summary, perturbation))
        _rate_axis(axis, rates)
    markers = [
        Line2D([], [], color="black", marker=GROUP_MARKER[g], ls=GROUP_STYLE[g], label=g) for g in GROUPS
    ]
    transition = Line2D([], [], color="crimson", label="detected transition")
    _legend(figure, _rate_handles(colours, rates, set()) + markers + [transition], "rate / group")
    return figure


def example_grid(
    *,
    images: np.ndarray,
    sigmas: Sequence[float],
    predictions: np.ndarray,
    true_labels: Sequence[int],
    assigned_labels: Sequence[int],
    kinds: Sequence[str],
    targets: Sequence[float],
) -> Figure:
    """Images [I, H, H] uint8 blurred at each grid sigma [K] (the grid sigma nearest to each of `targets`),
    a row per image, with its true, assigned and predicted labels (predictions [I, K]) under each panel.
    Blur only: it blurs the images itself."""
    blurred = blur(torch.as_tensor(images).float() / 255, blur_matrices(sigmas, images.shape[-1])).numpy()
    count, columns = len(images), len(sigmas)
    figure, axes = _figure(count, columns, size=(1.4 * columns + 0.8, 1.7 * count))
    for column, (sigma, target) in enumerate(zip(sigmas, targets, strict=True)):
        axes[0, column].set_title(f"sigma = {sigma:g} px\n(nearest to {target:g})", fontsize=9)
        for row in range(count):
            axis = axes[row, column]
            axis.imshow(blurred[column, row], cmap="gray", vmin=0, vmax=1)
            axis.set_xticks([])
            axis.set_yticks([])
            prediction = predictions[row, column]
            wrong = prediction != assigned_labels[row]
            axis.set_xlabel(
                f"true {true_labels[row]}  assigned {assigned_labels[row]}\npredicted {prediction}",
                fontsize=8,
                color="crimson" if wrong else "black",
            )
    for row, kind in enumerate(kinds):
        axes[row, 0].set_ylabel(kind, fontsize=9)
    return figure
