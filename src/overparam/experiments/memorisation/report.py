"""The memorisation experiment's report section, its summary lines and OUT/memorised.html (the most memorised
clean training images, to look at: Feldman and Zhang's atypical examples)."""

import base64
import html
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from overparam.data import load_split
from overparam.experiments.memorisation.analysis import verdict
from overparam.figures import save
from overparam.html_kit import Page, interval, p_value, paragraph, table_html
from overparam.store.files import write_text


def write_section(page: Page, tables: dict[str, pd.DataFrame]) -> None:
    if "memorisation_se" not in tables:
        return
    blocks = page.section("memorisation", "Does the probe measure memorisation?")
    blocks.append(
        paragraph(
            "Feldman and Zhang's (2020) memorisation of each training image, P(correct | trained on it) - "
            "P(correct | not), from the random-subset models; its standard error combines the two "
            "proportions' (memorisation_images.csv). Seeds are the replicates: each interval is a t interval "
            "over seeds of a per-run value."
        )
    )
    for sentence in verdict(tables):
        blocks.append(paragraph(sentence))
    if "memorisation_fit" in tables:
        blocks.append(paragraph("Did the subset models fit their subsets?"))
        blocks.append(table_html(tables["memorisation_fit"], source="analysis/memorisation_fit.csv"))
    blocks.append(table_html(tables["memorisation_se"], source="analysis/memorisation_se.csv"))
    if "memorisation_correlation_by_rate" in tables:
        shown = tables["memorisation_correlation_by_rate"].copy()
        shown["spearman"] = [
            interval(m, lo, hi) for m, lo, hi in zip(shown["mean"], shown["low"], shown["high"], strict=True)
        ]
        shown["p"] = shown["p"].map(p_value)
        blocks.append(
            paragraph(
                "Spearman correlation of memorisation with each score oriented as sensitivity (flip levels, "
                "margin and AUM negated: positive = the more fragile images are the more memorised)."
            )
        )
        blocks.append(
            table_html(
                shown[["rate", "group", "score", "seeds", "spearman", "p", "detectable"]],
                source="analysis/memorisation_correlation_by_rate.csv",
            )
        )
    tail = tables["memorisation_tail_by_rate"].copy()
    tail["value"] = [
        interval(m, lo, hi) for m, lo, hi in zip(tail["mean"], tail["low"], tail["high"], strict=True)
    ]
    blocks.append(
        paragraph(
            "The long tail: the distribution of memorisation (quantiles, fraction above each threshold)."
        )
    )
    blocks.append(
        table_html(
            tail[["rate", "group", "statistic", "seeds", "value"]],
            source="analysis/memorisation_tail_by_rate.csv",
        )
    )
    if "memorisation_removal_effect" in tables:
        effect = tables["memorisation_removal_effect"].copy()
        effect["difference"] = [
            interval(m, lo, hi)
            for m, lo, hi in zip(effect["mean"], effect["low"], effect["high"], strict=True)
        ]
        effect["p"] = effect["p"].map(p_value)
        blocks.append(
            paragraph(
                "Removing the k most memorised training images against k random ones: test accuracy without "
                "the random minus without the memorised (positive: the memorised images were worth more), "
                "paired within seed."
            )
        )
        blocks.append(
            table_html(
                effect[["rate", "k", "seeds", "difference", "p", "detectable"]],
                source="analysis/memorisation_removal_effect.csv",
            )
        )
        blocks.append(table_html(tables["memorisation_removal"], source="analysis/memorisation_removal.csv"))


def summary(tables: dict[str, pd.DataFrame]) -> list[str]:
    lines = verdict(tables)
    effect = tables.get("memorisation_removal_effect")
    if effect is not None:
        for row in effect.itertuples():
            lines.append(
                f"Rate {row.rate:.3g}: without the {row.k} most memorised images test accuracy is lower than "
                f"without {row.k} random ones by {interval(row.mean, row.low, row.high)} "
                f"(p {p_value(row.p)}, "
                f"{row.seeds} seeds; analysis/memorisation_removal_effect.csv)."
            )
    return ["## Memorisation", "", *lines, ""] if lines else []


def most_memorised(images: pd.DataFrame, top: int) -> pd.DataFrame:
    """The `top` clean training images with the highest memorisation, mean over the seeds whose runs hold
    them (rate 0 runs first: no injected mislabel shapes them), with their se and labels."""
    clean = images[~images["mislabelled"]]
    rate = clean["rate"].min()
    chosen = clean[clean["rate"] == rate]
    table = chosen.groupby("index", as_index=False).agg(
        label=("assigned_label", "first"),
        seeds=("seed", "nunique"),
        memorisation=("memorisation", "mean"),
        se=("se", "mean"),
        se_adjusted=("se_adjusted", "mean"),
    )
    return table.sort_values(["memorisation", "index"], ascending=[False, True]).head(top).assign(rate=rate)


def write_page(out: Path, images: pd.DataFrame, *, dataset: str, data_dir: Path | None, top: int) -> Path:
    """OUT/memorised.html (and memorised.csv): the most memorised clean training images, each with its index,
    label and memorisation +- se."""
    shown = most_memorised(images, top)
    from overparam.store.files import write_csv

    write_csv(shown, out / "memorised.csv")
    pixels, _ = load_split(dataset=dataset, split="train", data_dir=data_dir, download=False)
    columns = 8
    rows = max(1, -(-len(shown) // columns))
    figure = Figure(figsize=(columns * 1.4, rows * 1.6), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for axis, row in zip(axes.ravel(), shown.itertuples(index=False), strict=False):
        axis.imshow(pixels[int(row.index)].numpy(), cmap="gray_r")
        axis.set_title(
            f"#{int(row.index)}: {int(row.label)}\nmem {row.memorisation:.2f}±{row.se_adjusted:.2f}",
            fontsize=7,
        )
    picture = save(figure, folder=out, name="memorised").read_bytes()
    page = (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>most memorised: "
        f"{html.escape(dataset)}</title></head><body><h1>The {len(shown)} most memorised correctly labelled "
        f"training images of {html.escape(dataset)} "
        f"(rate {shown['rate'].iloc[0] if len(shown) else 0:g})</h1>"
        "<p>Each image: its index in the training split, its label, and Feldman and Zhang's memorisation "
        "(mean over seeds) ± its Agresti-Caffo standard error from the number of subset models "
        "(memorised.csv, "
        "also the Wald error, 0 for an image fit exactly when seen). "
        "Atypical digits are expected.</p>"
        f"<img alt='most memorised' src='data:image/png;base64,{base64.b64encode(picture).decode()}'>"
        "</body></html>\n"
    )
    write_text(page, out / "memorised.html")
    return out / "memorised.html"


def section(page: Page, inputs: Any) -> None:
    write_section(page, inputs.tables)
