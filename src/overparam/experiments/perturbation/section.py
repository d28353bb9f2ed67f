"""`overparam report OUT`: the analysis tables (OUT/analysis/*.csv), the figures (OUT/figures/*.png, .svg),
OUT/report.html (one self-contained file: figures embedded, CSS inline, no requests) and OUT/summary.md.

Reads only what a study wrote (README, "Outputs"); never trains or probes. Pixels for the example images
come from the data files when they can be found; otherwise that figure is replaced by a note.

Per family, the curves, gap-adjusted, verdict, smoothness and test-set sections have a block per perturbation
the runs were probed with (overparam.perturb), headed by its name and level: a newly registered perturbation
gets its blocks from its tables alone. The example images are drawn for blur only (they are blurred here).
"""

import html
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from overparam import figures
from overparam.data import DataUnavailableError, load_split, resolve_data_dir
from overparam.experiments.perturbation.across_rates import (
    ACROSS,
    ALPHA,
    CLAIMED,
    GAP,
    MDE_RESAMPLES,
    POWER,
    TRANSITION_RESAMPLES,
    verdict,
)
from overparam.html_kit import (
    Page,
    family_name,
    family_slug,
    fmt,
    interval,
    listed,
    p_value,
    paragraph,
    select_family,
    table_html,
)
from overparam.probe import GROUPS
from overparam.registry import ReportInputs
from overparam.results import FAMILY, KEYS, PERTURBATION, Study, percent

EXAMPLE_SIGMAS = (0.0, 0.7, 1.3, 2.0, 3.0)
EXAMPLES_PER_GROUP = 3
SHOWN_SUMMARIES = ("auc", "half_level")  # the curve summaries (rate_summaries' fit_fraction is shown apart)
# Units of a level in running text ("half-flip sigma (px)"); other perturbations' levels are named in full in
# their blocks' headings (figures.level_label) and go without a unit in the text.
LEVEL_UNITS = {"blur": "px"}
ONE_SEED_SUMMARY = "One seed: every test below is within one model; run at least 3 seeds."


def with_unit(text: str, perturbation: str) -> str:
    """`text` about a level, followed by the level's unit where LEVEL_UNITS knows it: "sigma (px)"."""
    unit = LEVEL_UNITS.get(perturbation)
    return f"{text} ({unit})" if unit else text


def summary_names(perturbation: str) -> dict[str, str]:
    """What the report calls each curve summary of `perturbation`: "half-flip sigma (px)" for blur,
    "half-flip level" for a perturbation without a unit in LEVEL_UNITS."""
    word = figures.level_word(perturbation)
    return {
        "auc": "area under the changed-fraction curve",
        "half_level": with_unit(f"half-flip {word}", perturbation),
    }


def zero_name(perturbations: Iterable[str]) -> str:
    """What the report calls the unperturbed model: "sigma 0" in a study of blur alone, else "level 0"."""
    return "sigma 0" if set(perturbations) == {"blur"} else "level 0"


def perturbation_heading(perturbation: str) -> str:
    """A perturbation block's heading: its name and what its level is."""
    return f"{perturbation}, level = {figures.level_label(perturbation)}"


def _of(frame: pd.DataFrame, perturbation: str) -> pd.DataFrame:
    """The rows of `frame` of one perturbation."""
    return frame[frame[PERTURBATION] == perturbation]


def _perturbations(frame: pd.DataFrame) -> list[str]:
    """The perturbations of a table's rows, in their order."""
    return list(pd.unique(frame[PERTURBATION])) if PERTURBATION in frame else []


def write_sections(page: Page, inputs: ReportInputs) -> None:
    """Per family of runs: training, starting gap, curves, gap-adjusted, the verdict, the test set and the
    per-run table; then, for a study of several widths, the fixed test compared across them; then robustness
    under attack."""
    tables, study = inputs.tables, inputs.study
    families = list(tables["training"].groupby(list(FAMILY)).groups)
    for key in families:
        chosen = {
            name: select_family(table, key) for name, table in tables.items() if set(FAMILY) <= set(table)
        }
        context = _Context(
            page,
            study,
            chosen,
            key,
            inputs.colours,
            several=len(families) > 1,
            perturbations=tuple(_perturbations(chosen["summaries"])),
        )
        _training(context)
        _starting_gap(context)
        _curves(context, data_dir=inputs.data_dir, seed=inputs.seed)
        _gap_adjusted(context)
        _transition(context)
        _test_set(context)
        _per_run(context)
    across_widths_section(page, tables["across_widths"], tables["transitions"])
    _robustness(page, tables["robustness"], study=study, colours=inputs.colours)


def _missed(runs: pd.DataFrame) -> pd.Series:
    """[runs] bool: the run ended short of the target accuracy."""
    return ~runs["reached_target"].astype(bool)


def _missed_rows(runs: pd.DataFrame) -> pd.Series:
    """The HTML class of each run's table row: "missed" when it ended short of the target."""
    return pd.Series(np.where(_missed(runs), "missed", ""))


@dataclass(frozen=True)
class _Context:
    """One family's tables and where its blocks go."""

    page: Page
    study: Study
    tables: dict[str, pd.DataFrame]
    key: tuple
    colours: figures.Colours
    several: bool
    perturbations: tuple[str, ...]  # the family's, in the order of its tables

    def blocks(self, anchor: str, title: str, perturbation: str | None = None) -> list[str]:
        """The section's blocks (made on first use), with a heading naming this family if there are several
        and the perturbation of a perturbation's block."""
        found = next((b for a, _, b in self.page.sections if a == anchor), None)
        blocks = found if found is not None else self.page.section(anchor, title)
        parts = [family_name(self.key)] if self.several else []
        parts += [perturbation_heading(perturbation)] if perturbation is not None else []
        if parts:
            blocks.append(f"<h3>{html.escape('; '.join(parts))}</h3>")
        return blocks

    def of(self, table: str, perturbation: str) -> pd.DataFrame:
        """The family's rows of analysis table `table` of one perturbation."""
        return _of(self.tables[table], perturbation)

    def curves(self, perturbation: str) -> pd.DataFrame:
        """The family's rows of curves.csv of one perturbation."""
        return _of(select_family(self.study.curves, self.key), perturbation)

    @property
    def zero(self) -> str:
        return zero_name(self.study.perturbations)

    @property
    def names(self) -> str:
        """The study's perturbations in words, for section titles."""
        return listed(self.study.perturbations)

    @property
    def missed(self) -> set[float]:
        runs = self.tables["training"]
        return set(runs.loc[_missed(runs), "rate"])

    def name(self, figure: str, perturbation: str | None = None) -> str:
        middle = f"-{perturbation}" if perturbation is not None else ""
        return f"{figure}{middle}-{family_slug(self.key)}"


def _training(context: _Context) -> None:
    blocks = context.blocks("training", "Did training reach the target?")
    runs = context.tables["training"]
    metrics = (
        select_family(context.study.metrics, context.key) if len(context.study.metrics) else pd.DataFrame()
    )
    target = context.study.config.get("config", {}).get("target_acc", float("nan"))
    missed = runs[_missed(runs)]
    if len(missed):
        listed = "; ".join(f"rate {percent(r.rate)} seed {r.seed}" for r in missed.itertuples())
        blocks.append(paragraph(f"{len(missed)} of {len(runs)} runs MISSED the target: {listed}.", "warning"))
    else:
        blocks.append(paragraph(f"All {len(runs)} runs reached the target accuracy {fmt(target)}."))
    if len(metrics):
        blocks.append(
            context.page.figure(
                figures.training_curves(
                    metrics=metrics, colours=context.colours, missed=context.missed, target=target
                ),
                name=context.name("training"),
                caption="Accuracy per epoch: on the assigned labels of every training image (dotted line: "
                "the target), on the mislabelled images (assigned labels) and on the test set (true labels); "
                "a line per run, an x where a run ended short of the target.",
            )
        )
    columns = [
        "rate_percent",
        "seed",
        "schedule",
        "epochs",
        "first_target_epoch",
        "final_lr",
        "reached_target",
    ]
    columns += ["train_acc", "mislabelled_train_acc", "test_acc"]
    shown = runs[[column for column in columns if column in runs]]
    classes = _missed_rows(runs)
    blocks.append(table_html(shown, source="analysis/training.csv", classes=classes))


def _starting_gap(context: _Context) -> None:
    zero = context.zero
    blocks = context.blocks("starting-gap", f"Starting gap: errors at {zero}")
    gap = context.tables["starting_gap"]
    unperturbed = "" if zero == "sigma 0" else " (level 0: the unperturbed images, under every perturbation)"
    blocks.append(
        paragraph(
            f"Error rate at {zero}{unperturbed} = fraction of images whose prediction differs from their "
            "assigned label, with 95 % Wilson intervals; ratio = mislabelled / clean with a 95 % Katz log "
            "interval."
        )
    )
    blocks.append(
        context.page.figure(
            figures.starting_gap(gap=gap, colours=context.colours, zero=zero),
            name=context.name("starting-gap"),
            caption=f"Left: error rate at {zero} of mislabelled (circles) and clean (squares) images per "
            "run (linear below 1e-4, logarithmic above). Right: their ratio (log scale; dotted line: equal "
            "error rates).",
        )
    )
    shown = pd.DataFrame(
        {
            "rate %": gap["rate_percent"],
            "seed": gap["seed"],
            "n mislabelled": gap["n_mislabelled"],
            "error mislabelled": _intervals(gap, "error_mislabelled"),
            "n clean": gap["n_clean"],
            "error clean": _intervals(gap, "error_clean"),
            "ratio": _intervals(gap, "ratio"),
        }
    )
    blocks.append(table_html(shown, source="analysis/starting_gap.csv"))
    by_rate = context.tables["rate_summaries"]
    fit = by_rate[by_rate["summary"] == "fit_fraction"]
    fit = _of(fit, context.perturbations[0]) if context.perturbations else fit  # the same under each
    rows = [
        {"rate %": 100 * rate, "seeds": at_rate["n_seeds"].max()}
        | {
            f"{group} fit": interval(
                *at_rate.loc[at_rate["group"] == group, ["value", "low", "high"]].iloc[0]
            )
            for group in ("mislabelled", "clean")
            if (at_rate["group"] == group).any()
        }
        for rate, at_rate in fit.groupby("rate")
    ]
    blocks.append(
        paragraph(
            f"Fraction of each group fit at {zero} (predicted as its assigned label), mean over seeds with a "
            "95 % t interval from the seed spread (one seed: Wilson, within one model). Training stops at a "
            "fraction of all images, so the unfit images are a larger share of the mislabelled ones at low "
            "rates: the mislabelled curves carry a starting gap that changes with rate by construction, "
            "which the fit subset removes."
        )
    )
    blocks.append(table_html(pd.DataFrame(rows), source="analysis/rate_summaries.csv (summary fit_fraction)"))


def _intervals(frame: pd.DataFrame, column: str, low: str = "", high: str = "") -> list[str]:
    low, high = low or f"{column}_low", high or f"{column}_high"
    return [interval(v, lo, hi) for v, lo, hi in zip(frame[column], frame[low], frame[high], strict=True)]


def _curves(context: _Context, *, data_dir: Path | None, seed: int) -> None:
    for perturbation in context.perturbations:
        _perturbation_curves(context, perturbation, data_dir=data_dir, seed=seed)


def _perturbation_curves(context: _Context, perturbation: str, *, data_dir: Path | None, seed: int) -> None:
    title = f"Curves: how predictions change under {context.names}"
    blocks = context.blocks("curves", title, perturbation)
    page, colours, missed = context.page, context.colours, context.missed
    word = figures.level_word(perturbation)
    if perturbation == "blur":
        blocks.append(_examples(context, data_dir=data_dir, seed=seed))
    curves = context.curves(perturbation)
    flips = context.of("image_curves", perturbation)
    common = {"colours": colours, "missed": missed, "perturbation": perturbation}
    blocks.append(
        page.figure(
            figures.outcome_panels(
                curves=curves, outcomes=["changed"], groups=("mislabelled", "clean"), **common
            ),
            name=context.name("changed-mislabelled-vs-clean", perturbation),
            caption=f"Fraction of images whose prediction differs from their own prediction at {word} 0, "
            "for mislabelled (solid) and clean (dashed) training images of every rate, with 95 % bands "
            "across seeds (mean of the runs' fractions +- t sd / sqrt(k); thin lines: each seed; a rate "
            "with one seed: its run's Wilson band, within one model).",
        )
    )
    for outcome, words in (
        ("changed", f"fraction of images whose prediction changed from {word} 0's"),
        ("agree_assigned", "fraction predicted as their assigned label"),
        (
            "agree_true",
            "fraction predicted as their true label (for mislabelled images: back to their class?)",
        ),
    ):
        blocks.append(
            page.figure(
                figures.curve_panels(curves=curves, outcome=outcome, **common),
                name=context.name(outcome.replace("_", "-"), perturbation),
                caption=f"Per group, the {words} vs {word}: a curve per rate with its 95 % band.",
            )
        )
    blocks.append(
        page.figure(
            figures.curve_panels(curves=flips[flips["subset"] == "all"], outcome="flipped", **common),
            name=context.name("flip-level", perturbation),
            caption=f"Distribution of flip {word}s (first {word} whose prediction differs from {word} 0's): "
            f"the cumulative fraction flipped by each {word}; a curve ending below 1 means some images never "
            "flip.",
        )
    )
    by_rate = context.of("rate_summaries", perturbation)
    by_rate = by_rate[by_rate["subset"] == "all"]
    rows = []
    for rate, at_rate in by_rate.groupby("rate"):
        row: dict[str, Any] = {"rate %": 100 * rate}
        for group in GROUPS:
            for summary, label in (("auc", "AUC"), ("half_level", f"half {word}")):
                found = at_rate[(at_rate["group"] == group) & (at_rate["summary"] == summary)]
                row[f"{group} {label}"] = (
                    interval(*found[["value", "low", "high"]].iloc[0]) if len(found) else "n/a"
                )
        rows.append(row)
    blocks.append(
        paragraph(
            f"Curve summaries: AUC = area under the changed-fraction curve divided by the {word} range (a "
            f"mean fraction changed); half {word} = {with_unit(word, perturbation)} by which half the images "
            "have flipped, n/a if never. Mean over seeds with a 95 % t interval from the seed spread (one "
            "seed: bootstrap over the images of one model)."
        )
    )
    blocks.append(
        table_html(pd.DataFrame(rows), source="analysis/rate_summaries.csv (per run: summaries.csv)")
    )


def _examples(context: _Context, *, data_dir: Path | None, seed: int) -> str:
    """The grid of example images, or a one-line note when they cannot be shown."""
    runs = [
        run
        for run in context.study.images
        if tuple(run.keys[c] for c in FAMILY) == context.key and run.perturbation == "blur"
    ]
    if not runs:
        return paragraph("Example images: no probed run.", "note")
    run = max(runs, key=lambda r: (r.keys["rate"], -r.keys["seed"]))
    rng = np.random.default_rng(seed)
    chosen = []
    for group in ("clean", "mislabelled"):
        candidates = np.flatnonzero(run.group == group)
        chosen += sorted(rng.choice(candidates, size=min(EXAMPLES_PER_GROUP, len(candidates)), replace=False))
    targets: dict[int, float] = {}  # grid position -> the first wanted sigma it is nearest to
    for target in EXAMPLE_SIGMAS:
        targets.setdefault(int(np.abs(run.levels - target).argmin()), target)
    columns = list(targets)
    folder = data_dir or context.study.config.get("config", {}).get("data_dir")
    try:
        images, _ = load_split(
            dataset=run.keys["dataset"], split="train", data_dir=resolve_data_dir(folder), download=False
        )
    except (DataUnavailableError, OSError) as error:
        return paragraph(f"Example images not shown. {error}", "note")
    chosen = np.asarray(chosen)
    figure = figures.example_grid(
        images=images.numpy()[run.index[chosen]],
        sigmas=run.levels[columns],
        predictions=run.predictions[np.ix_(columns, chosen)].T,
        true_labels=run.true_label[chosen],
        assigned_labels=run.assigned_label[chosen],
        kinds=run.group[chosen],
        targets=list(targets.values()),
    )
    others = [p for p in context.perturbations if p != "blur"]
    return context.page.figure(
        figure,
        name=context.name("examples"),
        caption=f"Training images of the run at rate {percent(run.keys['rate'])}, seed {run.keys['seed']}, "
        "blurred at the grid sigma nearest to 0, 0.7, 1.3, 2 and 3 px (column titles give the sigma used), "
        "with the model's prediction at that sigma (red when it differs from the assigned label)."
        + (f" Examples shown for blur (not for {listed(others)})." if others else ""),
        css="examples",
    )


def _gap_adjusted(context: _Context) -> None:
    for perturbation in context.perturbations:
        _perturbation_gap_adjusted(context, perturbation)


def _perturbation_gap_adjusted(context: _Context, perturbation: str) -> None:
    blocks = context.blocks("gap-adjusted", "Gap-adjusted comparison", perturbation)
    word = figures.level_word(perturbation)
    blocks.append(
        paragraph(
            f"Only training images whose {word}-0 prediction equals their assigned label (fit images), so "
            f"both groups start from the same place. Flip {word} = first {word} whose prediction differs "
            f"from {word} 0's; never flipped = censored at the largest {word}. Log-rank test of mislabelled "
            f"vs clean flip {word}s (z > 0: mislabelled images flip earlier); AUC difference = mislabelled - "
            "clean, with a 95 % bootstrap interval."
        )
    )
    fit = context.of("image_curves", perturbation)
    blocks.append(
        context.page.figure(
            figures.outcome_panels(
                curves=fit[fit["subset"] == "fit"],
                outcomes=["changed", "flipped"],
                groups=("mislabelled", "clean"),
                colours=context.colours,
                missed=context.missed,
                perturbation=perturbation,
            ),
            name=context.name("gap-adjusted", perturbation),
            caption="Fit images only: fraction changed (left) and fraction flipped at least once (right) vs "
            f"{word}, mislabelled (solid) vs clean (dashed), 95 % bands across seeds (one seed: the run's "
            "Wilson band).",
        )
    )
    gap = context.of("gap_adjusted", perturbation)
    shown = pd.DataFrame(
        {
            "rate %": gap["rate_percent"],
            "seed": gap["seed"],
            "n fit mislabelled": gap["n_mislabelled"],
            "flipped": gap["flipped_mislabelled"],
            "n fit clean": gap["n_clean"],
            "flipped ": gap["flipped_clean"],
            "AUC difference": _intervals(gap, "auc_difference"),
            "log-rank z": gap["logrank_statistic"],
            "p": [p_value(p) for p in gap["p_value"]],
        }
    )
    blocks.append(table_html(shown, source="analysis/gap_adjusted.csv"))


CURVE_NAMES = {  # {word}: what the perturbation's level is called (figures.level_word)
    ("all", "mislabelled"): "mislabelled images",
    ("all", "clean"): "clean images",
    ("all", "test"): "test images",
    ("fit", "mislabelled"): "mislabelled images fit at {word} 0",
    ("fit", "clean"): "clean images fit at {word} 0",
    ("fit", GAP): "gap-adjusted difference (fit mislabelled - fit clean)",
}


def curve_names(perturbation: str) -> dict[tuple[str, str, str], str]:
    """What the report calls each curve (subset, group, summary) of `perturbation`."""
    word = figures.level_word(perturbation)
    return {
        (subset, group, summary): f"{images.format(word=word)}, {name}"
        for (subset, group), images in CURVE_NAMES.items()
        for summary, name in summary_names(perturbation).items()
    }


def _curve_name(row: pd.Series) -> str:
    return curve_names(row[PERTURBATION])[row["subset"], row["group"], row["summary"]]


def claimed_words(row: pd.Series) -> str:
    """The test fixed in advance at the paper's place, in words; "" when the study lacks those rates."""
    if pd.isna(row["claimed_p"]):
        return ""
    place = f"{percent(CLAIMED[0])} to {percent(CLAIMED[1])}"
    outcome = "a step there" if row["claimed_p"] < ALPHA else "no step there detected"
    return (
        f"At the paper's place ({place}, tested alone): {outcome}; step beyond the trend "
        f"{interval(row['claimed_estimate'], row['claimed_low'], row['claimed_high'])}, p = "
        f"{p_value(row['claimed_p'])}; this test finds a step of {fmt(row['mde_claimed'])} or more with "
        f"{100 * POWER:.0f} % power."
    )


def gap_words(row: pd.Series) -> str:
    """The paper's second question, in words, from a gap_overall row."""
    if pd.isna(row.get("estimate")):
        return "Gap-adjusted comparison: no rate with fit mislabelled and fit clean images."
    alike = row["p_value"] >= ALPHA
    verdict_text = (
        f"no difference detected; a difference of {fmt(row['mde'])} or more would be found with "
        f"{100 * POWER:.0f} % power"
        if alike
        else ("mislabelled images change more" if row["estimate"] > 0 else "mislabelled images change less")
    )
    basis = (
        "seeds" if row["basis"] == "seeds" else "one seed: the interval covers the images of one model only"
    )
    word = figures.level_word(row[PERTURBATION])
    return (
        f"Once the starting gap is removed (only images fit at {word} 0), mislabelled minus clean area under "
        f"the changed-fraction curve, mean over {row['n_rates']} non-zero rates and {row['n_seeds']} seeds: "
        f"{interval(row['estimate'], row['low'], row['high'])}, p = {p_value(row['p_value'])} ({basis}): "
        f"{verdict_text}."
    )


TRANSITION_TITLE = "Verdict: is there a transition, and are mislabels treated alike?"


def _transition(context: _Context) -> None:
    blocks = context.blocks("transition", TRANSITION_TITLE)
    several = len(context.perturbations) > 1
    blocks.append(
        paragraph(
            "Seeds are the replicates: runs of one seed share initial weights, data order and (nested) "
            "mislabels, so rates are compared within seeds and the noise of every comparison is the "
            "seed-by-rate residual. For each curve, across the non-zero rates: (1) a test fixed in "
            "advance at the paper's place, 1.25 % to 1.43 %; (2) a search over every place for a step or "
            "a two-interval ramp beyond a smooth trend (linear in log rate, quadratic in sqrt rate or in "
            "rate; the largest p-value of the three), Holm-adjusted over the curves below"
            + (" of the same perturbation (each perturbation's verdict stands alone)" if several else "")
            + ". Each says how large a change it would have found with 80 % power. See the method notes."
        )
    )
    one_seed = (context.tables["transitions"]["basis"] == "one model").any()
    if one_seed:
        blocks.append(
            paragraph(
                "One seed: these tests are within one model. Nothing measures the seed-to-seed spread that "
                "PROTOCOL step 6 asks a jump to exceed; the noise is the scatter of the rates around the "
                "trend, and no jump t is printed. Run at least 3 seeds (--seeds 0 1 2) for a verdict that "
                "carries weight.",
                "warning",
            )
        )
    blocks.append(
        paragraph(
            "What would change a verdict: a change larger than its detectable size would have been found; "
            "the detectable size shrinks with the square root of the number of seeds. A detected change "
            "where the stopping epoch also changes (column 'stopping epoch changes') may be the "
            "schedule's: use --schedule full (the default), which trains every rate for the same epochs.",
            "note",
        )
    )
    for perturbation in context.perturbations:
        _perturbation_verdict(context, perturbation)
    _roughness(context)


def _perturbation_verdict(context: _Context, perturbation: str) -> None:
    blocks = context.blocks("transition", TRANSITION_TITLE, perturbation)
    found = context.of("transitions", perturbation)
    answered = found["tested"] | found["claimed_p"].notna()  # the fixed test can run where the search cannot
    question_one = found[answered & (found["group"] != GAP)]
    if len(question_one):
        primary = question_one[(question_one["subset"] == "all") & (question_one["group"] == "mislabelled")]
        lead = primary.iloc[0] if len(primary) else question_one.iloc[0]
        blocks.append(
            "<h4>1. Is there a transition?</h4>"
            + paragraph(f"{_curve_name(lead)}: {verdict(lead)}. {claimed_words(lead)}")
        )
    overall = context.of("gap_overall", perturbation)
    gap_rows = found[(found["group"] == GAP) & answered]
    words = gap_words(overall.iloc[0]) if len(overall) else ""
    if len(gap_rows):
        words += (
            f" Across rates, the difference: {verdict(gap_rows.iloc[0])}. {claimed_words(gap_rows.iloc[0])}"
        )
    blocks.append("<h4>2. Are mislabelled and clean images treated alike?</h4>" + paragraph(words))
    by_rate, summaries = context.of("rate_summaries", perturbation), context.of("summaries", perturbation)
    blocks.append(
        context.page.figure(
            figures.rate_summaries(
                by_rate=by_rate[(by_rate["subset"] == "all") & by_rate["summary"].isin(SHOWN_SUMMARIES)],
                per_run=summaries[summaries["subset"] == "all"],
                found=found[found["subset"] == "all"],
                colours=context.colours,
                perturbation=perturbation,
            ),
            name=context.name("summaries", perturbation),
            caption="Curve summaries vs rate: mean over seeds with a 95 % t interval from the seed spread "
            "(marker per group), each run's value (black dots); red vertical line: a detected transition.",
        )
    )
    shown = pd.DataFrame(
        {
            "curve": [_curve_name(row) for _, row in found.iterrows()],
            "verdict": [verdict(row) for _, row in found.iterrows()],
            "seeds": found["n_seeds"],
            "noise sd": found["noise_sd"],
            "search p": [p_value(p) for p in found["p_value"]],
            "Holm p": [p_value(p) for p in found["p_holm"]],
            "detectable (search)": found["mde_search"],
            "step at 1.25-1.43 %": _intervals(found, "claimed_estimate", "claimed_low", "claimed_high"),
            "p (fixed place)": [p_value(p) for p in found["claimed_p"]],
            "detectable (fixed place)": found["mde_claimed"],
            "stopping epoch changes": found["epochs_change"],
        }
    )
    blocks.append(table_html(shown, source="analysis/transitions.csv, analysis/gap_overall.csv"))
    steps = context.of("jumps", perturbation)
    steps = steps[steps["summary"].isin(SHOWN_SUMMARIES)]
    shown = pd.DataFrame(
        {
            "curve": [_curve_name(row) for _, row in steps.iterrows()],
            "from rate %": steps["rate_low_percent"],
            "to rate %": steps["rate_high_percent"],
            "jump (paired within seeds)": _intervals(steps, "jump"),
            "t": steps["t"],
            "p": [p_value(p) for p in steps["p_value"]],
        }
    )
    blocks.append(
        "<details><summary>Every step between consecutive rates (rate 0 is the control; one seed: no t)"
        "</summary>" + table_html(shown, source="analysis/jumps.csv") + "</details>"
    )


def across_widths_words(row: pd.Series) -> str:
    """An across_widths row in words: whether the fixed test's step differs between the widths."""
    differs = (
        "the step differs between the widths"
        if row["differs"]
        else "no difference between the widths detected"
    )
    return (
        f"At widths {row['widths']}, the step at the paper's place ranges from {fmt(row['lowest_estimate'])} "
        f"to {fmt(row['highest_estimate'])} (significant at {row['n_widths_with_step']} of "
        f"{row['n_widths']} widths); Cochran's Q = {fmt(row['q_statistic'])} on {row['q_dof']} degrees of "
        f"freedom, p = {p_value(row['p_value'])}: {differs}; a difference of {fmt(row['mde_pair'])} or more "
        f"between two widths would be found with {100 * POWER:.0f} % power."
    )


def across_widths_section(page: Page, table: pd.DataFrame, transitions: pd.DataFrame) -> None:
    """Whether the paper's transition test answers differently at different widths (a sweep over `width`):
    per perturbation the lead curve's fixed test at each width, and every curve's comparison."""
    if table.empty:
        return
    blocks = page.section("widths", "Does the answer depend on the network's width?")
    blocks.append(
        paragraph(
            "The test fixed at the paper's place (1.25 % to 1.43 %) at each width of the study, and whether "
            "its step differs between widths: Cochran's Q of the widths' estimates against chi-square "
            "(the widths share seeds, hence mislabels, which makes it conservative). Each width's search "
            "over every place is in its own section above."
        )
    )
    for perturbation in _perturbations(table):
        compared, tested = _of(table, perturbation), _of(transitions, perturbation)
        lead = compared[(compared["subset"] == "all") & (compared["group"] == "mislabelled")]
        lead = lead.iloc[0] if len(lead) else compared.iloc[0]
        at_widths = tested[
            np.logical_and.reduce([tested[c] == lead[c] for c in ACROSS]) & tested["claimed_p"].notna()
        ].sort_values("width")
        blocks.append(f"<h3>{html.escape(perturbation_heading(perturbation))}</h3>")
        blocks.append(paragraph(f"{_curve_name(lead)}: {across_widths_words(lead)}"))
        steps = _intervals(at_widths, "claimed_estimate", "claimed_low", "claimed_high")
        shown = pd.DataFrame(
            {
                "width": at_widths["width"],
                "step at 1.25-1.43 %": steps,
                "p": [p_value(p) for p in at_widths["claimed_p"]],
                "detectable": at_widths["mde_claimed"],
                "search": [verdict(row) for _, row in at_widths.iterrows()],
            }
        )
        blocks.append(table_html(shown, source="analysis/transitions.csv"))
        every = pd.DataFrame(
            {
                "curve": [_curve_name(row) for _, row in compared.iterrows()],
                "widths": compared["widths"],
                "lowest step": compared["lowest_estimate"],
                "highest step": compared["highest_estimate"],
                "Q": compared["q_statistic"],
                "p": [p_value(p) for p in compared["p_value"]],
                "detectable difference": compared["mde_pair"],
            }
        )
        blocks.append(
            "<details><summary>Every curve</summary>"
            + table_html(every, source="analysis/across_widths.csv")
            + "</details>"
        )


def _roughness(context: _Context) -> None:
    title = "Are the mislabelled curves rougher than their size explains?"
    blocks = context.blocks("smoothness", title)
    blocks.append(
        paragraph(
            "Roughness = root mean square departure of a changed-fraction curve from the straight line "
            "through each point's neighbours (a fraction of the images). Each mislabelled curve is compared "
            "with the curves of random sets of the same run's clean images of the same size: ratio = "
            "observed / median of the size-matched curves, p = the share of them at least as rough. Few "
            "images make any curve rough; this asks whether the mislabelled curves are rougher than that "
            "alone. Mean log ratio over seeds with a t interval (one seed: within one model). A curve "
            "that rises faster is also rougher at equal size, so a ratio above 1 is not by itself a "
            "different mechanism."
        )
    )
    for perturbation in context.perturbations:
        by_rate = context.of("roughness_by_rate", perturbation)
        if not len(by_rate):
            continue
        blocks = context.blocks("smoothness", title, perturbation)
        shown = pd.DataFrame(
            {
                "rate %": by_rate["rate_percent"],
                "subset": by_rate["subset"],
                "seeds": by_rate["n_seeds"],
                "ratio": _intervals(by_rate, "ratio"),
                "seeds with p < 0.05": by_rate["n_significant"],
            }
        )
        blocks.append(table_html(shown, source="analysis/roughness_by_rate.csv (per run: roughness.csv)"))


def _test_set(context: _Context) -> None:
    for perturbation in context.perturbations:
        _perturbation_test_set(context, perturbation)


def _perturbation_test_set(context: _Context, perturbation: str) -> None:
    blocks = context.blocks("test-set", "The test set (never mislabelled)", perturbation)
    word = figures.level_word(perturbation)
    blocks.append(
        context.page.figure(
            figures.outcome_panels(
                curves=context.curves(perturbation),
                outcomes=["changed", "agree_true"],
                groups=("test",),
                colours=context.colours,
                missed=context.missed,
                perturbation=perturbation,
            ),
            name=context.name("test", perturbation),
            caption=f"Test images: fraction changed from {word} 0's prediction (left) and fraction predicted "
            f"as the true label (right) vs {word}, a curve per mislabelling rate of the training set, 95 % "
            "bands.",
        )
    )
    by_rate = context.of("rate_summaries", perturbation)
    test = by_rate[(by_rate["group"] == "test") & by_rate["summary"].isin(SHOWN_SUMMARIES)]
    accuracy = context.tables["training"].groupby("rate")["test_acc"].mean()
    names = summary_names(perturbation)
    rows = [
        {
            "rate %": 100 * rate,
            "test accuracy (mean over seeds)": accuracy.get(rate, np.nan),
            **{
                names[s]: interval(*at_rate.loc[at_rate["summary"] == s, ["value", "low", "high"]].iloc[0])
                for s in SHOWN_SUMMARIES
            },
        }
        for rate, at_rate in test.groupby("rate")
    ]
    blocks.append(table_html(pd.DataFrame(rows), source="analysis/rate_summaries.csv, analysis/training.csv"))
    found = context.of("transitions", perturbation)
    for _, row in found[(found["group"] == "test") & (found["subset"] == "all")].iterrows():
        blocks.append(paragraph(f"Test set, {names[row['summary']]}: {verdict(row)}."))


def _per_run(context: _Context) -> None:
    blocks = context.blocks("runs", "Per-run table")
    runs = context.tables["training"]
    summaries = context.tables["summaries"]
    auc = summaries[(summaries["subset"] == "all") & (summaries["summary"] == "auc")]
    auc = auc.pivot_table(index=["rate", "seed"], columns=[PERTURBATION, "group"], values="value")
    several = len(context.perturbations) > 1
    auc.columns = [
        f"AUC {group} ({perturbation})" if several else f"AUC {group}" for perturbation, group in auc.columns
    ]
    gap = context.tables["starting_gap"].set_index(["rate", "seed"])[["error_mislabelled", "error_clean"]]
    table = runs.set_index(["rate", "seed"]).join(gap).join(auc).reset_index()
    shown = table.drop(columns=[*FAMILY, "rate"])
    classes = _missed_rows(table)
    blocks.append(
        table_html(
            shown,
            source="analysis/training.csv, analysis/starting_gap.csv, analysis/summaries.csv",
            classes=classes,
        )
    )


METHODS = """
<ul>
<li><b>Perturbations</b>: every image is predicted at every level of each perturbation's grid (blur: a
whole-image Gaussian, level = sigma in pixels); level 0 is the unperturbed image under every perturbation.
Each perturbation is analysed on its own: every curve, summary, test and Holm adjustment below is within
one perturbation, never pooled over them.</li>
<li><b>Wilson intervals</b> (95 %) for every fraction of a count (overparam.stats.wilson_interval).</li>
<li><b>Starting gap</b>: error = 1 - agreement with the assigned label at level 0 (blur: sigma 0), the
unperturbed model's, the same under every perturbation; the ratio mislabelled /
clean has a Katz log interval, with +0.5 added to every count when an error count is 0
(Haldane-Anscombe).</li>
<li><b>Curve summaries</b>: AUC = trapezoid area under an image set's changed-fraction curve divided by the
level range (the mean fraction changed over the range); half level (blur: half sigma) = the level where the
cumulative fraction of flipped images reaches 1/2, linearly interpolated between grid levels, n/a (censored)
if it never does.
Intervals: {n_bootstrap} nonparametric bootstrap resamples of the images (percentile intervals; drawn as
multinomial counts of the distinct per-image values, which is the same resampling), an upper bound "inf"
when more than 2.5 % of resamples never reach half.</li>
<li><b>Across seeds</b>: seeds are the replicates (images of one model are not); per rate the mean over
seeds with a t interval on k - 1 degrees of freedom, mean +- t sd / sqrt(k); with one seed the run's bootstrap
interval, marked "one model". The curve figures' bands are the same: across seeds, or one run's Wilson
band.</li>
<li><b>Gap-adjusted comparison</b>: images whose level-0 prediction is their assigned label; flip level
(blur: flip sigma) is a time to event with never-flipped images censored at the largest level;
scipy.stats.logrank compares mislabelled with clean images over the whole level range and handles censoring
and the ties of a discrete
grid. Across rates: per seed, the mean over the non-zero rates of the AUC difference (fit mislabelled - fit
clean) is one replicate; t interval and test over seeds, and the difference that test detects with
{power:.0%} power at alpha {alpha} (noncentral t).</li>
<li><b>Block design</b>: runs of one seed share initial weights, data order and nested mislabels, so each
summary is modelled as y[seed, rate] = mu[rate] + b[seed] + e; the noise of every comparison of rates is the
variance of e from the two-way additive fit, on (k - 1)(R - 1) degrees of freedom. Jumps between consecutive
rates are paired within seeds: t = mean difference / sqrt(2 var(e) / k).</li>
<li><b>Transition</b>: over the non-zero rates (rate 0 is the control). Smooth trends: linear in log rate
(on the protocol's grid six of eight rates crowd into a narrow band of log rate, where a quadratic would bend
and absorb a change), quadratic in sqrt rate, quadratic in rate. Changes: a step between consecutive rates,
or a ramp over two intervals whose midpoint is a grid rate, each with at least two rates on either side.
F = (rss_trend - rss_trend+change) / (var(e) / k). <i>Fixed test</i>: a step from 1.25 % to 1.43 % (the
paper's claim), a t test on the block residual's degrees of freedom; estimate with its t interval; no search,
so no correction. <i>Search</i>: the largest F over changes, whose null distribution ({n_resamples}
simulated studies: normal rate means and an independent chi-square noise estimate) includes the choice of
place and shape; no interval for the chosen change's height, as its place was chosen for looking best;
Holm-adjusted over the curves of a family and perturbation. For both, the largest p-value over the three
trends (a trend smooth on any scale is not a transition). Minimum detectable effect: the step at the claimed
place (mid-grid without it) found with {power:.0%} power at alpha {alpha}, by {mde_resamples} simulations for
the search, noncentral t for the fixed test. Simulated (tests/test_transitions.py; 3 seeds, 8 rates, seed
effects 5 times the residual): size 2-4 %, and for a change of 3 residual sd the search finds a step at the
claimed place 91 % of the time, a two-interval ramp 84 %, a logistic of the same span 76 %. With one seed the
noise comes from the scatter around each fit (R - 3 or R - 4 degrees of freedom), with far less power.</li>
<li><b>Stopping</b>: with --schedule target different rates stop at different epochs, at different points of
the one-cycle schedule; a detected change where the stopping epoch also changes is flagged. --schedule full
(default) trains every run for the whole schedule.</li>
<li><b>Smoothness</b>: roughness = root mean square departure of a changed-fraction curve from the line
through each point's two neighbours; each mislabelled curve against 999 random size-matched sets of the same
run's clean images (one-sided resampling p-value); mean log ratio over seeds with a t interval.</li>
<li>Caveats: with one seed, intervals reflect only which images were drawn, not training noise; mislabelled
sets are nested across rates, so rates at one seed share images.</li>
</ul>
"""


def _robustness(page: Page, table: pd.DataFrame, *, study: Study, colours: figures.Colours) -> None:
    """Standard and adversarially trained models side by side: test accuracy under attack (when probed),
    and the curves of every perturbation, a row per training (when the study has several)."""
    trainings = _trainings(study)
    if table.empty and trainings is None:
        return
    blocks = page.section("robustness", "Standard vs adversarially trained models")
    if not table.empty:
        blocks.append(
            paragraph(
                "Test accuracy on the true labels, clean and under each attack probed, mean over seeds; a "
                "row per variant, adversarial training (method and its epsilon, none = standard training), "
                "rate and attack level."
            )
        )
        keys = ["variant", "adversarial", "adversarial_epsilon", "rate_percent", "perturbation", "level"]
        shown = table.groupby(keys, as_index=False).agg(
            seeds=("seed", "nunique"), clean=("clean_test_acc", "mean"), attacked=("robust_test_acc", "mean")
        )
        renamed = {"rate_percent": "rate %", "adversarial_epsilon": "training eps", "perturbation": "attack"}
        blocks.append(table_html(shown.rename(columns=renamed), source="analysis/robustness.csv"))
    if trainings is None:
        return
    curves, names = trainings
    for perturbation in study.perturbations:
        chosen = curves[curves[PERTURBATION] == perturbation]
        if chosen["training"].nunique() < 2:
            continue
        figure = figures.trainings_side_by_side(
            curves=chosen,
            trainings=[name for name in names if name in set(chosen["training"])],
            outcome="changed",
            colours=colours,
            perturbation=perturbation,
        )
        caption = (
            f"Fraction of images whose prediction changed under {perturbation}, a row per training, a "
            "curve per rate with its band over seeds (curves.csv joined with runs.csv on the run)."
        )
        blocks.append(page.figure(figure, name=f"trainings-{perturbation}", caption=caption))


def _trainings(study: Study) -> tuple[pd.DataFrame, list[str]] | None:
    """curves.csv with a `training` column ("standard", or "pgd eps 0.1", ..., followed by the variant when
    variants differ in more than their training) and the trainings in order, when the study's models were
    trained in more than one way; else None."""
    runs = study.runs
    if "adversarial" not in runs or runs["adversarial"].nunique() < 2:
        return None
    method, epsilon = runs["adversarial"], runs["adversarial_epsilon"]
    label = pd.Series(
        np.where(method == "none", "standard", method + " eps " + epsilon.map("{:g}".format)),
        index=runs.index,
    )
    if (runs.assign(label=label).groupby("label")["variant"].nunique() > 1).any():
        label = label + " | " + runs["variant"].astype(str)
    runs = runs.assign(training=label)
    curves = study.curves.merge(runs[[*KEYS, "training"]].drop_duplicates(), on=list(KEYS))
    names = sorted(set(runs["training"]), key=lambda name: (not name.startswith("standard"), name))
    return curves, names


def write_methods(page: Page, inputs: ReportInputs) -> None:
    """The method notes, the report's last section."""
    page.section("methods", "Method notes").append(
        METHODS.format(
            n_bootstrap=inputs.n_bootstrap,
            n_resamples=TRANSITION_RESAMPLES,
            mde_resamples=MDE_RESAMPLES,
            power=POWER,
            alpha=ALPHA,
        )
    )


def _markdown_table(frame: pd.DataFrame) -> list[str]:
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + " --- |" * len(frame.columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return [*lines, ""]


def summary_lines(tables: dict[str, pd.DataFrame]) -> list[str]:
    """The study's lines of summary.md, the report in short: every number in them is a cell of an analysis
    table."""
    lines: list[str] = []
    zero = zero_name(_perturbations(tables["summaries"]))
    for key, runs in tables["training"].groupby(list(FAMILY)):
        chosen = {
            name: select_family(table, key) for name, table in tables.items() if set(FAMILY) <= set(table)
        }
        lines += [f"## {family_name(key)}", "", "### Training", ""]
        missed = runs[_missed(runs)]
        lines += ["All runs reached the target." if missed.empty else "Some runs MISSED the target.", ""]
        lines += _markdown_table(
            runs[["rate_percent", "seed", "epochs", "reached_target", "train_acc", "test_acc"]].rename(
                columns={"rate_percent": "rate %", "reached_target": "reached", "train_acc": "train acc"}
                | {"test_acc": "test acc"}
            )
        )
        gap = chosen["starting_gap"]
        lines += [f"### Starting gap: error rate at {zero} (vs assigned label)", ""]
        lines += _markdown_table(
            pd.DataFrame(
                {
                    "rate %": gap["rate_percent"],
                    "seed": gap["seed"],
                    "n mislabelled": gap["n_mislabelled"],
                    "mislabelled": _intervals(gap, "error_mislabelled"),
                    "clean": _intervals(gap, "error_clean"),
                    "ratio": _intervals(gap, "ratio"),
                }
            )
        )
        for perturbation in _perturbations(chosen["summaries"]):
            of = {name: _of(table, perturbation) for name, table in chosen.items() if PERTURBATION in table}
            lines += _perturbation_summary(of, perturbation)
    return lines


def _perturbation_summary(chosen: dict[str, pd.DataFrame], perturbation: str) -> list[str]:
    """summary.md's lines of one family and perturbation: gap-adjusted, curve summaries, verdict."""
    word = figures.level_word(perturbation)
    adjusted = chosen["gap_adjusted"]
    lines = [f"### Gap-adjusted: {perturbation} (images fit at {word} 0, mislabelled vs clean)", ""]
    lines += _markdown_table(
        pd.DataFrame(
            {
                "rate %": adjusted["rate_percent"],
                "seed": adjusted["seed"],
                "AUC difference": _intervals(adjusted, "auc_difference"),
                "log-rank z": adjusted["logrank_statistic"],
                "p": [p_value(p) for p in adjusted["p_value"]],
            }
        )
    )
    by_rate = chosen["rate_summaries"]
    by_rate = by_rate[by_rate["subset"] == "all"]
    lines += [f"### Curve summaries: {perturbation} (mean over seeds)", ""]
    auc, half = (by_rate[by_rate["summary"] == s].reset_index(drop=True) for s in SHOWN_SUMMARIES)
    lines += _markdown_table(
        pd.DataFrame(
            {
                "group": auc["group"],
                "rate %": auc["rate_percent"],
                "seeds": auc["n_seeds"],
                "AUC": _intervals(auc, "value", "low", "high"),
                half_column(perturbation): _intervals(half, "value", "low", "high"),
            }
        )
    )
    found = chosen["transitions"]
    lines += [f"### Verdict: {perturbation}", ""]
    if (found["basis"] == "one model").any():
        lines += [ONE_SEED_SUMMARY, ""]
    lines += [f"- {gap_words(row)}" for _, row in chosen["gap_overall"].iterrows()]
    for _, row in found.iterrows():
        tests = f" (search p = {p_value(row['p_value'])}, Holm p = {p_value(row['p_holm'])})"
        evidence = tests if row["tested"] else ""
        lines.append(f"- {_curve_name(row)}: {verdict(row)}{evidence}. {claimed_words(row)}".rstrip())
    return [*lines, ""]


def half_column(perturbation: str) -> str:
    """summary.md's column of the half-flip level: "half sigma (px)" for blur."""
    return with_unit(f"half {figures.level_word(perturbation)}", perturbation)
