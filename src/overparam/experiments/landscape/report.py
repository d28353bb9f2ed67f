"""The experiment's outputs: every analysis table as OUT/<name>.csv, figures under OUT/figures (PNG and
SVG) and OUT/report.html (one self-contained page, built with the study report's `Page` kit)."""

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from overparam.experiments.landscape.settings import LandscapeConfig
from overparam.experiments.landscape.summary import PUBLISHED_D_INT90
from overparam.html_kit import Page, fmt, paragraph, render, table_html
from overparam.store.files import write_csv, write_text

GROUP_COLOURS = {
    ("clean", "assigned"): "tab:blue",
    ("mislabelled", "assigned"): "tab:red",
    ("mislabelled", "true"): "tab:orange",
    ("test", "true"): "tab:grey",
    ("disputed", "a"): "tab:purple",
    ("disputed", "b"): "tab:green",
}
GROUP_NAMES = {
    ("clean", "assigned"): "clean",
    ("mislabelled", "assigned"): "mislabelled (assigned label)",
    ("mislabelled", "true"): "mislabelled (true label)",
    ("test", "true"): "test",
    ("disputed", "a"): "disputed (run a's label)",
    ("disputed", "b"): "disputed (run b's label)",
}
ONE_REPLICATE = "one seed (or pair): no interval"


def _band(
    axis: Axes, x: np.ndarray, frame: pd.DataFrame, column: str, *, upper: float = 1.0, **style: Any
) -> None:
    """`column` of `frame` against `x`, with its 95 % band (`_low`, `_high`) clipped to [0, upper]."""
    axis.plot(x, frame[column], marker="o", markersize=3, **style)
    low, high = frame[f"{column}_low"].to_numpy(), frame[f"{column}_high"].to_numpy()
    if np.isfinite(low).any():
        axis.fill_between(
            x, np.clip(low, 0, upper), np.clip(high, 0, upper), alpha=0.12, color=style.get("color")
        )


def _curve_label(group: str, label: str) -> str:
    base = group.removesuffix("_a").removesuffix("_b")
    suffix = " of run a" if group.endswith("_a") else (" of run b" if group.endswith("_b") else "")
    return GROUP_NAMES.get((base, label), f"{group} ({label})") + suffix


def intrinsic_figure(curves: pd.DataFrame, d_int90: pd.DataFrame) -> Figure:
    """Test accuracy against d per network: mean over seeds, 95 % t band; the 90 % threshold, the measured
    d_int90 and Li et al.'s."""
    networks = list(curves.groupby(["model", "width", "train_size"], sort=True))
    figure = Figure(figsize=(5 * len(networks), 3.6), layout="constrained")
    for axis, ((model, width, train_size), frame) in zip(
        np.atleast_1d(figure.subplots(1, len(networks))), networks, strict=True
    ):
        test = frame[(frame["group"] == "test") & (frame["dim"] > 0)].sort_values("dim")
        _band(axis, test["dim"].to_numpy(), test, "fit_fraction", color="tab:blue", label="subspace")
        row = d_int90[(d_int90["model"] == model) & (d_int90["width"] == width)].iloc[0]
        axis.axhline(0.9 * row["full_test_acc"], color="k", linestyle=":", label="90 % of the full network")
        if np.isfinite(row["d_int90"]):
            axis.axvline(row["d_int90"], color="tab:blue", linestyle="--", label="d_int90 (mean over seeds)")
        published = PUBLISHED_D_INT90.get((model, width))
        if published:
            axis.axvline(published, color="tab:red", linestyle="--", label="Li et al. 2018")
        axis.set_xscale("log")
        axis.set_xlabel("subspace dimension d")
        axis.set_ylabel("test accuracy")
        axis.set_title(f"{model} width {width}, {train_size} training images", fontsize=9)
        axis.legend(fontsize=7)
    return figure


def memorisation_figure(curves: pd.DataFrame) -> Figure:
    """Fraction of each group fit against d, a panel per rate."""
    rates = sorted(curves["rate"].unique())
    figure = Figure(figsize=(4.2 * len(rates), 3.6), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, len(rates), sharey=True))
    for axis, rate in zip(axes, rates, strict=True):
        frame = curves[(curves["rate"] == rate) & (curves["dim"] > 0)]
        for group, column, label in (
            ("clean", "fit_fraction", "assigned"),
            ("mislabelled", "fit_fraction", "assigned"),
            ("mislabelled", "agree_true_fraction", "true"),
            ("test", "fit_fraction", "true"),
        ):
            part = frame[frame["group"] == group].sort_values("dim")
            if len(part):
                style = {"color": GROUP_COLOURS[group, label], "label": GROUP_NAMES[group, label]}
                _band(axis, part["dim"].to_numpy(), part, column, **style)
        axis.axhline(0.9, color="k", linestyle=":", linewidth=0.8)
        axis.set_xscale("log")
        axis.set_title(f"rate {rate:.3g}", fontsize=9)
        axis.set_xlabel("subspace dimension d")
    axes[0].set_ylabel("fraction predicted as the label")
    axes[-1].legend(fontsize=7)
    return figure


def path_figure(curves: pd.DataFrame, *, column: str) -> Figure:
    """`column` (accuracy or loss) of each group along each path, rows: kind of pair and rates; columns:
    linear, Bezier. Means over pairs, 95 % t bands."""
    cases = list(curves.groupby(["pair", "rate_a", "rate_b"], sort=True))
    figure = Figure(figsize=(10, 3.2 * len(cases)), layout="constrained")
    axes = figure.subplots(len(cases), 2, squeeze=False, sharey=True)
    for row, ((kind, rate_a, rate_b), frame) in enumerate(cases):
        for col, path in enumerate(("linear", "bezier")):
            axis = axes[row, col]
            for (group, label), part in frame[frame["path"] == path].groupby(["group", "label"], sort=True):
                if group.startswith("clean") and label == "true":
                    continue  # a clean image's true label is its assigned one
                base = group.removesuffix("_a").removesuffix("_b")
                style = "--" if group.endswith("_b") else "-"
                part = part.sort_values("t")
                _band(
                    axis,
                    part["t"].to_numpy(),
                    part,
                    column,
                    upper=1.0 if column == "accuracy" else np.inf,
                    color=GROUP_COLOURS.get((base, label), "k"),
                    linestyle=style,
                    label=_curve_label(group, label),
                )
            axis.set_title(f"{path}: {kind} pair, rates {rate_a:.3g} -> {rate_b:.3g}", fontsize=9)
            axis.set_xlabel("t (0: run a, 1: run b)")
        axes[row, 0].set_ylabel(column)
    if column == "loss":
        for axis in axes.ravel():
            axis.set_yscale("symlog", linthresh=0.1)
    handles, labels = axes[0, 1].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncol=3, fontsize=7)
    return figure


def tunnel_figure(curves: pd.DataFrame) -> Figure:
    """Fraction fit of each group against the radius along filter-normalised random directions, a panel per
    rate (mean over seeds of each run's mean over directions)."""
    rates = sorted(curves["rate"].unique())
    figure = Figure(figsize=(4.2 * len(rates), 3.4), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, len(rates), sharey=True))
    for axis, rate in zip(axes, rates, strict=True):
        for (group, label), part in curves[curves["rate"] == rate].groupby(["group", "label"], sort=True):
            if (group, label) not in GROUP_COLOURS or (group == "clean" and label == "true"):
                continue
            part = part.sort_values("radius")
            style = {"color": GROUP_COLOURS[group, label], "label": GROUP_NAMES[group, label]}
            _band(axis, part["radius"].to_numpy(), part, "fit", **style)
        axis.set_title(f"rate {rate:.3g}", fontsize=9)
        axis.set_xlabel("radius alpha (filter-normalised)")
    axes[0].set_ylabel("fraction predicted as the label")
    axes[-1].legend(fontsize=7)
    return figure


def _interval_text(row: pd.Series, column: str) -> str:
    low, high = row.get(f"{column}_low", np.nan), row.get(f"{column}_high", np.nan)
    if not np.isfinite(low):
        return f"{fmt(row[column])} ({ONE_REPLICATE})"
    return f"{fmt(row[column])} (95 % CI {fmt(low)} to {fmt(high)})"


def _intrinsic_section(page: Page, tables: dict[str, pd.DataFrame]) -> None:
    blocks = page.section("intrinsic", "Intrinsic dimension of the classic networks")
    blocks.append(
        paragraph(
            "d_int90 (Li et al. 2018): the smallest d on the grid whose test accuracy reaches 90 % of the "
            "full network's, trained with the same optimiser and epochs; per seed, then mean over seeds with "
            "a 95 % t interval. Li et al. report 750 for the 784-200-200-10 network and 290 for LeNet-5 on "
            "all of MNIST after 100 epochs; a preset with fewer images or epochs measures its own networks' "
            "d_int90. A seed's d_int90 is a grid point: its crossing lies between the grid point below and "
            "it, which the interval over seeds does not include."
        )
    )
    summary = tables["d_int90"]
    for _, row in summary.iterrows():
        above = f"; {int(row['seeds_above_grid'])} seed(s) never reached it up to d = {row['largest_dim']}"
        blocks.append(
            paragraph(
                f"{row['model']} width {row['width']} ({row['train_size']} images): d_int90 "
                f"{_interval_text(row, 'd_int90')} over {row['seeds_reached']} seed(s), range "
                f"{fmt(row['d_int90_min'])}-{fmt(row['d_int90_max'])}; full network test accuracy "
                f"{fmt(row['full_test_acc'])}; Li et al.: {fmt(row['published_d_int90'])}"
                + (above if row["seeds_above_grid"] else "")
            )
        )
    blocks.append(table_html(summary, source="d_int90.csv"))
    blocks.append(
        page.figure(
            intrinsic_figure(tables["intrinsic_curves"], summary),
            name="intrinsic_dimension",
            caption="Test accuracy against subspace dimension d (mean over seeds, 95 % t band); "
            "dotted: 90 % of "
            "the full network's accuracy; dashed: measured d_int90 and Li et al.'s.",
        )
    )


def _memorisation_section(page: Page, tables: dict[str, pd.DataFrame]) -> None:
    blocks = page.section("memorisation", "How many dimensions memorisation costs")
    blocks.append(
        paragraph(
            "Fraction of clean and of mislabelled training images predicted as their assigned label, "
            "and of the "
            "mislabelled ones predicted as their true label, against d, at each rate; d90 is where a group "
            "reaches 90 % fit (interpolated in log d between grid points). The cost of the mislabels: d90 of "
            "the mislabelled images minus d90 of the clean images of the same run, and that per mislabelled "
            "image; means over seeds with 95 % t intervals."
        )
    )
    blocks.append(
        page.figure(
            memorisation_figure(tables["memorisation_curves"]),
            name="memorisation_vs_d",
            caption="Fraction of each group fit against d, a panel per rate (mean over seeds, 95 % t band); "
            "dotted: 90 %.",
        )
    )
    blocks.append(table_html(tables["group_d90_by_rate"], source="group_d90_by_rate.csv"))
    if len(tables["mislabel_cost_by_rate"]):
        blocks.append(table_html(tables["mislabel_cost_by_rate"], source="mislabel_cost_by_rate.csv"))
        blocks.append(
            paragraph(
                "A group that never reaches 90 % within the grid has no d90 (n/a): the cost is then "
                "only bounded "
                "below by the largest d of the grid."
            )
        )


def _paths_section(page: Page, tables: dict[str, pd.DataFrame]) -> None:
    blocks = page.section("paths", "Paths between memorising minima")
    blocks.append(
        paragraph(
            "Straight line and trained quadratic Bezier curve (Garipov et al. 2018) between two "
            "trained runs: "
            "of one rate and two seeds, and of one seed and two consecutive rates (nested "
            "mislabels). At every "
            "point the batch-norm statistics are recomputed over both runs' training images. Barrier: the "
            "largest excess of a group's loss (or error) over the straight line between the path's two ends; "
            "means over pairs with 95 % t intervals. Pairs of three seeds share models, so these "
            "intervals are "
            "optimistic."
        )
    )
    for column, name in (("accuracy", "path_accuracy"), ("loss", "path_loss")):
        blocks.append(
            page.figure(
                path_figure(tables["path_curves"], column=column),
                name=name,
                caption=f"{column.capitalize()} of each group along each path (mean over pairs, 95 % "
                f"t band); "
                "solid: run a's images, dashed: run b's.",
            )
        )
    summary = tables["path_barriers_summary"]
    shown = summary[
        summary["group"].str.startswith(("clean", "mislabelled", "test")) & (summary["label"] != "true")
    ]
    columns = [
        "pair",
        "rate_a",
        "rate_b",
        "path",
        "group",
        "label",
        "loss_barrier",
        "loss_barrier_low",
        "loss_barrier_high",
        "error_barrier",
        "error_barrier_low",
        "error_barrier_high",
    ]
    blocks.append(table_html(shown[columns], source="path_barriers_summary.csv (all labels there)"))


def _tunnel_section(page: Page, tables: dict[str, pd.DataFrame]) -> None:
    blocks = page.section("tunnel", "Width of the minima, per group")
    blocks.append(
        paragraph(
            "Fraction of each group fit at theta + alpha delta along filter-normalised random "
            "directions delta "
            "(Li et al. 2018, 'Visualizing the loss landscape'); half radius: the alpha at which a "
            "group's fit "
            "falls to half its value at 0. Mislabelled minus clean half radius per run (mean over "
            "directions), "
            "then mean over seeds with a 95 % t interval: negative means the minimum is narrower for the "
            "mislabelled images."
        )
    )
    blocks.append(
        page.figure(
            tunnel_figure(tables["tunnel_curves"]),
            name="tunnel",
            caption="Fraction of each group fit against the radius (mean over seeds of the mean over "
            "directions, 95 % t band).",
        )
    )
    blocks.append(table_html(tables["tunnel_half_radius_by_rate"], source="tunnel_half_radius_by_rate.csv"))
    if len(tables["tunnel_gap"]):
        blocks.append(table_html(tables["tunnel_gap"], source="tunnel_gap.csv"))


def write_outputs(out: Path, tables: dict[str, pd.DataFrame], *, config: LandscapeConfig) -> Path:
    """Write every table as OUT/<name>.csv, the figures and OUT/report.html; returns the report's path."""
    for name, table in tables.items():
        write_csv(table, out / f"{name}.csv")
    page = Page(out=out)
    setup = page.section("setup", "Set-up")
    setup.append(
        paragraph(
            f"Preset {config.preset}, data set {config.dataset}, seeds {', '.join(map(str, config.seeds))}; "
            "every setting, version and the device are in config.json."
        )
    )
    if "d_int90" in tables:
        _intrinsic_section(page, tables)
    if "memorisation_curves" in tables:
        _memorisation_section(page, tables)
    if "path_curves" in tables:
        _paths_section(page, tables)
    if "tunnel_curves" in tables:
        _tunnel_section(page, tables)
    report = out / "report.html"
    write_text(render(page, title="Loss landscape of memorisation"), report)
    return report
