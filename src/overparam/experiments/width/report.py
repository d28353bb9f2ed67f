"""The experiment's outputs: every table as OUT/<name>.csv, figures under OUT/figures (PNG and SVG) and
OUT/report.html, written with the report's HTML kit."""

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from overparam.experiments.width.analysis import ALPHA, POWER
from overparam.experiments.width.belkin import peak
from overparam.experiments.width.settings import WidthConfig
from overparam.figures import rate_colours
from overparam.html_kit import Page, fmt, interval, p_value, paragraph, render, table_html
from overparam.store.files import write_csv, write_text


def _threshold_parameters(curve: pd.DataFrame, width: float) -> float:
    """The parameter count at `width`, interpolated on log width and log parameters of one curve's grid."""
    log_width, log_parameters = (
        np.log(curve["width"].to_numpy(float)),
        np.log(curve["parameters"].to_numpy(float)),
    )
    return float(np.exp(np.interp(np.log(width), log_width, log_parameters)))


def sweep_figure(curves: pd.DataFrame, thresholds: pd.DataFrame) -> Figure:
    """Per family (a row): test error, and the fit of the mislabelled images, against parameters (log x), a
    line per rate with its 95 % t band over seeds (clipped to [0, 1]: both are fractions); each rate's
    interpolation threshold dashed."""
    families = list(curves.groupby(["dataset", "model"], sort=True))
    colours = rate_colours(curves["rate"])
    figure = Figure(figsize=(10, 3.4 * len(families)), layout="constrained")
    axes = np.atleast_2d(figure.subplots(len(families), 2, squeeze=False))
    for row, ((dataset, model), family) in zip(axes, families, strict=True):
        for rate, curve in family.groupby("rate", sort=True):
            curve = curve.sort_values("parameters")
            x, colour = curve["parameters"].to_numpy(float), colours[float(rate)]
            found = thresholds[
                (thresholds["dataset"] == dataset)
                & (thresholds["model"] == model)
                & (thresholds["rate"] == rate)
            ]
            for axis, column in zip(row, ("test_error", "mislabelled_fit"), strict=True):
                if curve[column].isna().all():
                    continue
                axis.plot(x, curve[column], marker="o", markersize=3, color=colour, label=f"rate {rate:g}")
                low, high = curve[f"{column}_low"].to_numpy(float), curve[f"{column}_high"].to_numpy(float)
                if np.isfinite(low).any():
                    axis.fill_between(x, np.clip(low, 0, 1), np.clip(high, 0, 1), color=colour, alpha=0.15)
                if len(found) and np.isfinite(found["threshold"].iloc[0]):
                    at = _threshold_parameters(curve, found["threshold"].iloc[0])
                    axis.axvline(at, color=colour, linestyle="--", linewidth=1)
        for axis, label in zip(row, ("test error", "fit of the mislabelled images"), strict=True):
            axis.set_xscale("log")
            axis.set_xlabel("parameters")
            axis.set_ylabel(label)
            axis.set_title(f"{dataset}, {model}", fontsize=9)
        row[0].legend(fontsize=7, title="dashed: interpolation threshold", title_fontsize=7)
    return figure


def belkin_figure(table: pd.DataFrame) -> Figure:
    """Test and train squared loss and zero-one error of the RFF fits against N / n (log x); N = n dotted."""
    figure = Figure(figsize=(10, 3.4), layout="constrained")
    axes = figure.subplots(1, 2)
    x = table["features_per_image"].to_numpy(float)
    for axis, column, label in zip(axes, ("loss", "error"), ("squared loss", "zero-one error"), strict=True):
        axis.plot(x, table[f"test_{column}"], marker="o", markersize=3, label="test")
        axis.plot(x, table[f"train_{column}"], marker="s", markersize=3, label="train")
        axis.axvline(1.0, color="k", linestyle=":", label="N = n")
        axis.set_xscale("log")
        if column == "loss":
            axis.set_yscale("log")
        axis.set_xlabel("random features per training image, N / n")
        axis.set_ylabel(label)
        axis.legend(fontsize=7)
    return figure


def belkin_sentence(table: pd.DataFrame) -> str:
    """Where the test squared loss and zero-one error of the RFF sweep peak."""
    n = int(table["n_train"].iloc[0])
    loss, error = peak(table, column="test_loss"), peak(table, column="test_error")
    return (
        f"On {n} images the test squared loss peaks at N = {loss['n_features']} features (N / n = "
        f"{fmt(loss['features_per_image'])}): {fmt(loss['value'])}, against {fmt(loss['first'])} at the "
        f"fewest and {fmt(loss['last'])} at the most features; the test error peaks at N = "
        f"{error['n_features']} (N / n = {fmt(error['features_per_image'])}): {fmt(error['value'])}, against "
        f"{fmt(error['first'])} and {fmt(error['last'])}."
    )


def verdicts(thresholds: pd.DataFrame, peaks: pd.DataFrame) -> list[str]:
    """One sentence per family x rate: the threshold with its interval, the peak test of test error, and
    whether the probe's blur gap and AUROC change at the threshold."""
    sentences = []
    for row in thresholds.itertuples(index=False):
        where = f"{row.dataset}, {row.model}, rate {row.rate:g}"
        if row.seeds_reached < row.seeds:
            sentences.append(
                f"{where}: only {row.seeds_reached} of {row.seeds} seeds fit every assigned label at some "
                "width of the grid, so the threshold lies beyond it for the others; no peak test."
            )
            continue
        text = (
            f"{where}: interpolation threshold at width {fmt(row.threshold)} [{fmt(row.threshold_low)}, "
            f"{fmt(row.threshold_high)}] (geometric mean over {row.seeds} seeds, range "
            f"{fmt(row.threshold_min)}-{fmt(row.threshold_max)})."
        )
        of_row = peaks[
            (peaks["dataset"] == row.dataset) & (peaks["model"] == row.model) & (peaks["rate"] == row.rate)
        ].set_index("measure")
        if "test_error" in of_row.index and of_row.loc["test_error", "k"] >= 2:
            found = of_row.loc["test_error"]
            verdict = "a peak" if found["peak"] else "no peak detected"
            text += (
                " Test error at the threshold minus its neighbours' mean: "
                f"{interval(found['mean'], found['low'], found['high'])} over {int(found['k'])} seeds, "
                f"one-sided p = {p_value(found['p_value'])}: {verdict}; the smallest peak this test detects "
                f"with {POWER:.0%} power at {ALPHA:g} is {fmt(found['detectable'])}."
            )
        else:
            text += " Too few seeds have the threshold inside the grid for a peak test."
        for measure, name in PROBE_MEASURES.items():
            if measure in of_row.index and of_row.loc[measure, "k"] >= 2:
                found = of_row.loc[measure]
                verdict = "it changes there" if found["peak"] else "no change detected"
                text += (
                    f" {name} at the threshold minus its neighbours' mean: "
                    f"{interval(found['mean'], found['low'], found['high'])}, two-sided p = "
                    f"{p_value(found['p_value'])}: {verdict} (detectable: {fmt(found['detectable'])})."
                )
        sentences.append(text)
    return sentences


# The probe's view of the mislabelled images, tested for a change at the threshold (analysis.ALTERNATIVES).
PROBE_MEASURES = {
    "blur_gap": "The blur gap (fit images, mislabelled minus clean)",
    "blur_auroc": "The blur flip level's AUROC at finding the mislabelled images",
}


def write_outputs(out: Path, tables: dict[str, pd.DataFrame], *, config: WidthConfig) -> Path:
    """Write every table as OUT/<name>.csv, the figures and OUT/report.html; returns the report's path."""
    for name, table in tables.items():
        write_csv(table, out / f"{name}.csv")
    page = Page(out=out)
    page.section("setup", "Set-up").append(
        paragraph(
            f"Preset {config.preset}; data sets {', '.join(config.datasets)}; "
            + "; ".join(
                f"{sweep.model} widths {', '.join(map(str, sweep.widths))}" for sweep in config.sweeps
            )
            + f"; {config.train_size} training and {config.test_size} test images; rates "
            f"{', '.join(f'{rate:g}' for rate in config.rates)}; seeds {', '.join(map(str, config.seeds))}; "
            f"{config.max_epochs} epochs, whole schedule (no early stop). Every setting, version and the "
            "device are in config.json."
        )
    )
    if "belkin" in tables:
        blocks = page.section("belkin", "Random Fourier features (Belkin et al. 2019)")
        blocks.append(paragraph(belkin_sentence(tables["belkin"])))
        blocks.append(
            page.figure(belkin_figure(tables["belkin"]), name="belkin_rff", caption="RFF minimum-norm fits")
        )
        blocks.append(table_html(tables["belkin"], source="belkin.csv"))
    if "width_curves" in tables and len(tables["width_curves"]):
        blocks = page.section("sweep", "Test error and memorisation against size")
        blocks.append(
            page.figure(
                sweep_figure(tables["width_curves"], tables["thresholds"]),
                name="width_sweep",
                caption="Test error and fit of the mislabelled images against parameters; 95 % t bands over "
                "seeds",
            )
        )
        blocks += [paragraph(sentence) for sentence in verdicts(tables["thresholds"], tables["peaks"])]
        blocks.append(table_html(tables["thresholds"], source="thresholds.csv"))
        blocks.append(table_html(tables["peaks"], source="peaks.csv"))
        shown = [
            c
            for c in (
                "dataset",
                "model",
                "rate",
                "width",
                "parameters",
                "seeds",
                "test_error",
                "test_loss",
                "train_acc",
                "mislabelled_fit",
                "blur_gap",
                "blur_auroc",
            )
            if c in tables["width_curves"]
        ]
        blocks.append(table_html(tables["width_curves"][shown], source="width_curves.csv"))
    report = out / "report.html"
    write_text(render(page, title="How the network's size changes memorisation"), report)
    return report
