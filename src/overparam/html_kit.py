"""The HTML kit every report section is written with: a `Page` of numbered sections and figures, tables
that name the analysis table they came from, and the report's way of printing numbers and intervals.
"""

import base64
import html
import math
import numbers
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from overparam import figures
from overparam.results import FAMILY


def fmt(value: Any) -> str:
    """A number as the report prints it: 3 significant digits, "n/a" for a missing one, "inf" if infinite."""
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if not isinstance(value, numbers.Real):
        return str(value)
    if math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if abs(value) < 1e-12:  # Wilson bounds of a zero count come out as rounding residue
        return "0"
    if float(value).is_integer() and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.3g}"


def interval(value: float, low: float, high: float) -> str:
    """'value [low, high]', or 'n/a' when the value is missing."""
    return "n/a" if pd.isna(value) else f"{fmt(value)} [{fmt(low)}, {fmt(high)}]"


def p_value(value: float) -> str:
    return fmt(value) if pd.isna(value) else f"{value:.2g}"


@dataclass
class Page:
    """The report under construction: numbered figures saved under OUT/figures, sections of HTML blocks."""

    out: Path
    sections: list[tuple[str, str, list[str]]] = field(default_factory=list)
    numbers: Iterator[int] = field(default_factory=lambda: count(1))

    def section(self, anchor: str, title: str) -> list[str]:
        blocks: list[str] = []
        self.sections.append((anchor, title, blocks))
        return blocks

    def figure(self, figure: Any, *, name: str, caption: str, css: str = "") -> str:
        path = figures.save(figure, folder=self.out / "figures", name=name)
        data = base64.b64encode(path.read_bytes()).decode()
        number = next(self.numbers)
        return (
            f'<figure class="{css}"><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
            f"<figcaption><b>Figure {number}.</b> {html.escape(caption)} "
            f"(<code>figures/{name}.png</code>, <code>.svg</code>)</figcaption></figure>"
        )


DISPLAY_NAMES = {
    "rate_percent": "rate %",
    "n_mislabelled": "n mislabelled",
    "reached_target": "reached target",
    "train_acc": "train acc",
    "mislabelled_train_acc": "mislabelled acc",
    "test_acc": "test acc",
    "error_mislabelled": "error mislabelled",
    "error_clean": "error clean",
}


def table_html(frame: pd.DataFrame, *, source: str, classes: pd.Series | None = None) -> str:
    """An HTML table of `frame` (cells formatted by `fmt`) and the analysis table it came from."""
    head = "".join(f"<th>{html.escape(DISPLAY_NAMES.get(c, c))}</th>" for c in frame.columns)
    rows = []
    for number, row in enumerate(frame.itertuples(index=False)):
        css = f' class="{classes.iloc[number]}"' if classes is not None and classes.iloc[number] else ""
        rows.append(f"<tr{css}>" + "".join(f"<td>{html.escape(fmt(v))}</td>" for v in row) + "</tr>")
    return (
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        f'<p class="source">Source: {html.escape(source)}</p>'
    )


def paragraph(text: str, css: str = "") -> str:
    return f'<p class="{css}">{html.escape(text)}</p>' if css else f"<p>{html.escape(text)}</p>"


def family_name(key: tuple) -> str:
    variant, dataset, model, width, train_size = key
    shown = f"{dataset}, {model} width {width}, {train_size} training images"
    return shown if variant == "all" else f"{variant}: {shown}"


def family_slug(key: tuple) -> str:
    variant, dataset, model, width, train_size = key
    slug = f"{dataset}-{model}w{width}-n{train_size}"
    return slug if variant == "all" else f"{re.sub(r'[^A-Za-z0-9.]+', '_', variant)}-{slug}"


def select_family(frame: pd.DataFrame, key: tuple) -> pd.DataFrame:
    mask = np.logical_and.reduce([frame[c] == v for c, v in zip(FAMILY, key, strict=True)])
    return frame[mask]


STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
nav ol { columns: 2; }
table { border-collapse: collapse; margin: .5em 0; font-size: .85em; }
th, td { border: 1px solid #ddd; padding: .2em .5em; text-align: right; }
th { background: #f3f3f3; }
tr.missed td { background: #fde2e2; color: #900; font-weight: bold; }
.source { font-size: .8em; color: #666; margin-top: 0; }
.warning { background: #fde2e2; color: #900; padding: .5em; font-weight: bold; }
.note { color: #666; font-style: italic; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; }
figure.examples img { max-width: 720px; }
figcaption { font-size: .9em; color: #333; }
"""


def render(page: Page, *, title: str) -> str:
    """The whole report as one HTML document."""
    contents = "".join(
        f'<li><a href="#{anchor}">{html.escape(name)}</a></li>' for anchor, name, _ in page.sections
    )
    body = "".join(
        f'<section id="{anchor}"><h2>{number}. {html.escape(name)}</h2>{"".join(blocks)}</section>'
        for number, (anchor, name, blocks) in enumerate(page.sections, start=1)
    )
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1><nav><ol>{contents}</ol></nav>"
        f"{body}</body></html>\n"
    )


def listed(names: Sequence[str]) -> str:
    """["blur"] -> "blur"; ["blur", "noise", "fgsm"] -> "blur, noise and fgsm"."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
