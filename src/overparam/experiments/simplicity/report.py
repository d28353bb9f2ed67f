"""The simplicity experiment's page (OUT/report.html) and figures (OUT/figures, PNG and SVG)."""

import html
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from overparam.experiments.simplicity.targets import FORMULAS
from overparam.html_kit import Page, paragraph, render, table_html
from overparam.store.files import write_text


def prior_figure(points: pd.DataFrame, overview: dict[str, Any]) -> Figure:
    """log10 P(f) against complexity, one dot per (complexity, count) pair, darker for more functions, and
    the fitted upper bound."""
    figure = Figure(figsize=(6, 4), layout="constrained")
    axis = figure.subplots()
    shade = np.log10(points["functions"].to_numpy())
    dots = axis.scatter(points["complexity"], points["log10_p"], c=shade, s=6, cmap="viridis_r")
    figure.colorbar(dots, ax=axis, label="log10 functions")
    if np.isfinite(overview["bound_slope_a"]):
        grid = np.linspace(points["complexity"].min(), points["complexity"].max(), 50)
        bound = -(overview["bound_slope_a"] * grid + overview["bound_intercept_b"]) * np.log10(2)
        axis.plot(
            grid,
            bound,
            color="crimson",
            label=f"bound: log2 P = -{overview['bound_slope_a']:.3g} K {-overview['bound_intercept_b']:+.3g}",
        )
        axis.legend(loc="upper right")
    axis.set_ylim(bottom=np.log10(1 / overview["draws"]) - 1)
    axis.set_xlabel("Lempel-Ziv complexity K (bits)")
    axis.set_ylabel("log10 P(f)")
    axis.axhline(np.log10(1 / overview["draws"]), color="grey", linestyle=":", linewidth=1)
    return figure


def rank_figure(rank: pd.DataFrame) -> Figure:
    """Rank-frequency: P(f) against the rank of f, both logarithmic."""
    figure = Figure(figsize=(5, 4), layout="constrained")
    axis = figure.subplots()
    axis.loglog(rank["rank"], rank["probability"], marker=".", linestyle="-")
    axis.set_xlabel("rank of the function")
    axis.set_ylabel("P(f)")
    return figure


def sgd_figure(functions: pd.DataFrame, targets: list[str]) -> Figure:
    """Per target: P_SGD(f | S) against the prior's P(f | S), sampled (dots, where sampled) and by the
    Gaussian-process approximation (crosses), and the diagonal."""
    figure = Figure(figsize=(4 * len(targets), 4), layout="constrained")
    axes = figure.subplots(1, len(targets), squeeze=False)[0]
    for axis, name in zip(axes, targets, strict=True):
        rows = functions[(functions["target"] == name) & (functions["sgd_count"] > 0)]
        sampled = rows[rows["prior_count"] > 0]
        modelled = rows[rows["log10_p_gp"].notna()]
        axis.scatter(sampled["p_prior"], sampled["p_sgd"], s=12, label="sampled prior")
        axis.scatter(10 ** modelled["log10_p_gp"], modelled["p_sgd"], s=12, marker="x", label="GP (EP)")
        shown = pd.concat([sampled["p_prior"], 10 ** modelled["log10_p_gp"], rows["p_sgd"]])
        if len(shown):
            low = max(shown.min(), 1e-300)
            axis.plot([low, 1], [low, 1], color="grey", linestyle="--", linewidth=1)
            axis.set_xscale("log")
            axis.set_yscale("log")
        axis.set_title(f"{name}: {FORMULAS[name]}", fontsize=9)
        axis.set_xlabel("prior P(f | S)")
        axis.set_ylabel("SGD P(f | S)")
        axis.legend(fontsize=7)
    return figure


def noise_figure(summary: pd.DataFrame) -> Figure:
    """Per noise target: the fraction of informative held-out neighbours that follow a flipped label and
    the baseline next to clean points (left), and complexities (right), against the number of flips."""
    names = list(dict.fromkeys(summary["target"]))
    figure = Figure(figsize=(9, 3.5 * len(names)), layout="constrained")
    axes = figure.subplots(len(names), 2, squeeze=False)
    for (left, right), name in zip(axes, names, strict=True):
        rows = summary[summary["target"] == name]
        for column, label in (
            ("follow_flipped", "next to a flipped point"),
            ("follow_clean", "next to a clean point"),
        ):
            _band(left, rows, column, label)
        left.axhline(0, color="black", linewidth=0.8, label="rule + lookup table")
        left.set_title(f"{name}: held-out neighbours off the clean rule", fontsize=9)
        left.set_xlabel("flipped training labels k")
        left.set_ylabel("fraction")
        left.legend(fontsize=7)
        for column, label in (("complexity", "learned"), ("lookup_complexity", "rule + lookup table")):
            _band(right, rows, column, label)
        right.axhline(rows["target_complexity"].iloc[0], color="black", linewidth=0.8, label="clean rule")
        right.set_title(f"{name}: complexity", fontsize=9)
        right.set_xlabel("flipped training labels k")
        right.set_ylabel("LZ complexity (bits)")
        right.legend(fontsize=7)
    return figure


def _band(axis: Any, rows: pd.DataFrame, column: str, label: str) -> None:
    line = axis.plot(rows["flips"], rows[column], marker="o", label=label)[0]
    axis.fill_between(
        rows["flips"], rows[f"{column}_low"], rows[f"{column}_high"], color=line.get_color(), alpha=0.2
    )


def write_report(
    out: Path, *, config: dict[str, Any], overview: dict[str, Any], tables: dict[str, pd.DataFrame]
) -> Path:
    """OUT/report.html (figures under OUT/figures) from the experiment's tables; returns its path."""
    page = Page(out=out)
    prior = page.section("prior", "The prior P(f) of the parameter-function map")
    architecture, o = config["architecture"], overview
    network = f"{architecture['n_bits']}-{'-'.join(map(str, architecture['hidden']))}-1"
    prior.append(
        paragraph(
            f"{o['draws']:,} draws of a {network} ReLU network (weights N(0, {architecture['sigma_w']}^2 / "
            f"fan-in), biases N(0, {architecture['sigma_b']}^2)) gave {o['distinct_functions']:,} distinct "
            f"functions of the 128 inputs ({o['seen_once_fraction']:.0%} of them seen once). The constant "
            f"functions hold {o['p_constant_0'] + o['p_constant_1']:.3g} of the mass; the most frequent "
            f"function {'is' if o['constant_most_likely'] else 'is not'} constant. The 10 most frequent hold "
            f"{o['mass_top_10']:.3g} of the mass, {o['functions_for_half_the_mass']:,} functions half of it. "
            "Fitted bound (the least-squares line through the highest log2 P at each complexity drawn at "
            f"least {o['bound_min_count']} times, raised to lie above them): log2 P(f) <= "
            f"-{o['bound_slope_a']:.3g} K(f) {-o['bound_intercept_b']:+.3g}; Spearman correlation of K and "
            f"log P over the distinct functions {o['spearman_complexity_log_p']:.3g}. The dotted line is one "
            "draw: below it nothing is seen."
        )
    )
    prior.append(
        page.figure(
            prior_figure(tables["prior_points"], overview),
            name="prior_complexity",
            caption="log10 P(f) against the Lempel-Ziv complexity of f, with the fitted upper bound.",
        )
    )
    prior.append(page.figure(rank_figure(tables["prior_rank"]), name="prior_rank", caption="Rank-frequency."))
    shown = tables["prior_top"].head(10).drop(columns=["function"])
    prior.append(table_html(shown, source="prior_top.csv"))
    sgd = page.section("sgd", "SGD against the prior conditioned on the training labels")
    sgd.append(
        paragraph(
            "Each target's labels on the same training inputs are learned to zero training error from fresh "
            "draws of the prior; P_SGD(f | S) is how often SGD finds f, P(f | S) how often the prior's draws "
            "that agree with the target on every training input are f (rejection sampling from the prior's "
            "own draws) where enough draws agree, and otherwise the Gaussian-process approximation (NNGP "
            "kernel, expectation propagation) for the functions SGD finds most often, as Mingard et al. do."
        )
    )
    shown = [
        "target",
        "target_complexity",
        "reached_zero_error",
        "sgd_functions",
        "prior_draws_consistent",
        "sgd_mass_with_prior_support",
        "log_probability_correlation",
        "gp_functions",
        "gp_mass",
        "gp_log_probability_correlation",
        "gp_correlation_found_twice",
        "sgd_error",
        "prior_error",
    ]
    sgd.append(table_html(tables["sgd_summary"][shown], source="sgd_summary.csv"))
    sgd.append(
        paragraph(
            "How well the GP with EP gives the sampled prior, for the prior's most frequent functions "
            "(log10 P sampled, log10 P by GP and EP):"
        )
    )
    sgd.append(table_html(tables["gp_check"].head(10), source="gp_check.csv"))
    sgd.append(
        page.figure(
            sgd_figure(tables["sgd_functions"], list(tables["sgd_summary"]["target"])),
            name="sgd_against_prior",
            caption="SGD's frequency of each function against its prior probability given the training "
            "labels: sampled (functions found and sampled) and by the Gaussian-process approximation.",
        )
    )
    noise = page.section("noise", "Label noise on the cube: lookup table or model?")
    noise.append(
        paragraph(
            "k training labels flipped per training (a fresh choice each time), trained to zero error. For "
            "each training input and each of its held-out Hamming neighbours where the clean rule agrees with"
            " it, does the learned function disagree with the rule there (following the flipped label)? A "
            "rule plus a lookup table of exceptions predicts the same fraction next to flipped as next to "
            "clean points (zero for a perfectly learned rule); a model that absorbs the noise predicts more "
            "next to flipped points. Means over trainings, 95 % t intervals; 'difference_detectable' is the "
            "half-width of the paired difference's interval, the smallest difference these trainings could "
            "detect."
        )
    )
    columns = [
        "target",
        "flips",
        "reached_zero_error",
        "held_out_error",
        "follow_flipped",
        "follow_clean",
        "difference",
        "difference_low",
        "difference_high",
        "complexity",
        "lookup_complexity",
        "target_complexity",
    ]
    noise.append(table_html(tables["noise_summary"][columns], source="noise_summary.csv"))
    noise.append(
        page.figure(
            noise_figure(tables["noise_summary"]),
            name="noise_neighbours",
            caption="Held-out neighbours off the clean rule next to flipped and clean training points, and "
            "the complexity of the learned function and of rule plus lookup table, against the flips.",
        )
    )
    settings = page.section("settings", "Settings")
    settings.append(f"<pre>{html.escape(pd.Series(config).to_string())}</pre>")
    path = out / "report.html"
    write_text(render(page, title="Simplicity bias on the Boolean cube"), path)
    return path
