"""`write_report` on a tiny real study (2 seeds, rates 0, 5 % and 10 %, one epoch: every run misses the
target), and the report rendered in headless Chromium; and on a synthetic study probed under two
perturbations (test_analysis.write_study), which gets a block per perturbation."""

import html
import itertools
import json
import math
import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_analysis import write_study

from overparam import figures
from overparam.cli import main
from overparam.experiments.perturbation.section import (
    ONE_SEED_SUMMARY,
    SHOWN_SUMMARIES,
    curve_names,
    half_column,
    perturbation_heading,
    summary_lines,
)
from overparam.report import write_report
from overparam.results import FAMILY

ANALYSIS_TABLES = (
    "training",
    "starting_gap",
    "image_curves",
    "summaries",
    "gap_adjusted",
    "rate_summaries",
    "jumps",
    "transitions",
    "run_values",
    "gap_overall",
)
SECTIONS = (
    "setup", "training", "starting-gap", "curves", "gap-adjusted", "transition", "smoothness", "test-set",
    "runs",
)  # fmt: skip
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    out = tmp_path_factory.mktemp("study") / "out"
    settings = "--preset smoke --train-size 200 --test-size 100 --rates 0 0.05 0.1 --seeds 0 1 --max-epochs 1"
    settings += " --no-report"  # the report fixture writes it, with fewer resamples
    code = main(["reproduce", *settings.split(), "--data-dir", str(data_root), "--out", str(out)])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def report(study: Path, data_root: Path) -> Path:
    return write_report(study, data_dir=data_root, n_bootstrap=50)


def test_report_writes_tables_figures_and_a_self_contained_page(report: Path, study: Path) -> None:
    assert report == study / "report.html"
    for name in ANALYSIS_TABLES:
        assert len(pd.read_csv(study / "analysis" / f"{name}.csv")) > 0, name
    pngs = sorted((study / "figures").glob("*.png"))
    perturbations = set(pd.read_csv(study / "analysis" / "summaries.csv")["perturbation"])
    assert "blur" in perturbations
    assert {p.stem.rsplit("-mnist", 1)[0] for p in pngs} >= {"examples", "training"} | {
        f"{figure}-{perturbation}"
        for figure in ("summaries", "gap-adjusted")
        for perturbation in perturbations
    }
    assert all(p.with_suffix(".svg").stat().st_size > 0 for p in pngs)
    page = report.read_text()
    sources = re.findall(r'(?:src|href)="([^"#][^"]*)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert len(sources) == len(pngs)  # every figure embedded once
    assert [m for m in re.findall(r'<section id="([^"]+)"', page)] == [*SECTIONS, "methods"]
    assert "MISSED the target" in page and page.count('<tr class="missed">') == 2 * 6  # two tables of 6 runs
    assert "Source: analysis/starting_gap.csv" in page


NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


@dataclass(frozen=True)
class Cell:
    """Where a printed cell comes from: a column of the analysis table, printed to `digits` significant
    digits; an `interval` prints "column [column_low, column_high]"."""

    column: str
    digits: int = 3
    interval: bool = False


FAMILY_HEADING = (
    r"## (?:(?P<variant>.+): )?(?P<dataset>\S+), (?P<model>\S+) width (?P<width>\d+), "
    r"(?P<train_size>\d+) training images"
)
RUN = {"rate %": Cell("rate_percent"), "seed": Cell("seed")}
# summary.md's tables, by the start of their heading: (analysis table, cells that identify the row, cells
# of values); "curve_summaries" is rate_summaries with a column per summary (`_per_summary`), whose half-flip
# column is named after the perturbation (`_values`).
SUMMARY_TABLES = {
    "Training": (
        "training",
        RUN,
        {
            "epochs": Cell("epochs"),
            "reached": Cell("reached_target"),
            "train acc": Cell("train_acc"),
            "test acc": Cell("test_acc"),
        },
    ),
    "Starting gap": (
        "starting_gap",
        RUN,
        {
            "n mislabelled": Cell("n_mislabelled"),
            "mislabelled": Cell("error_mislabelled", interval=True),
            "clean": Cell("error_clean", interval=True),
            "ratio": Cell("ratio", interval=True),
        },
    ),
    "Gap-adjusted": (
        "gap_adjusted",
        RUN,
        {
            "AUC difference": Cell("auc_difference", interval=True),
            "log-rank z": Cell("logrank_statistic"),
            "p": Cell("p_value", digits=2),
        },
    ),
    "Curve summaries": (
        "curve_summaries",
        {"group": Cell("group"), "rate %": Cell("rate_percent")},
        {
            "seeds": Cell("n_seeds"),
            "AUC": Cell("auc", interval=True),
            "half": Cell("half_level", interval=True),
        },
    ),
}
# The sections of one perturbation, headed "<title>: <perturbation>" and optionally " (...)".
PER_PERTURBATION = re.compile(
    r"(?:Gap-adjusted|Curve summaries|Verdict): (?P<perturbation>[^\s(]+)(?: \(.*\))?"
)


def _values(values: dict[str, Cell], perturbation: str | None) -> dict[str, Cell]:
    """A table's value cells, the half-flip column under its name for `perturbation`."""
    return {(half_column(perturbation) if name == "half" else name): cell for name, cell in values.items()}


def _reports(printed: str, value: object, digits: int = 3) -> bool:
    """`printed` states `value` as the report prints it: `digits` significant digits (a whole number in
    full, 0 for rounding residue), n/a when missing, inf / -inf, yes / no for a flag, text as it is."""
    if isinstance(value, bool | np.bool_):
        return printed == ("yes" if value else "no")
    if isinstance(value, str):
        return printed == value
    value = float(value)  # type: ignore[arg-type]
    if math.isnan(value):
        return printed == "n/a"
    if math.isinf(value):
        return printed == ("inf" if value > 0 else "-inf")
    if not NUMBER.fullmatch(printed):
        return False
    number = float(printed)
    if value.is_integer() and abs(value) < 1e6:
        return number == value
    if number == 0:
        return abs(value) < 1e-12
    unit = 10.0 ** (math.floor(math.log10(abs(value))) - digits + 1)  # of the last printed digit
    return abs(number - value) <= unit / 2 * (1 + 1e-9)


def _reports_cell(printed: str, row: pd.Series, cell: Cell) -> bool:
    if not cell.interval or pd.isna(row[cell.column]):
        return _reports(printed, row[cell.column], cell.digits)
    found = re.fullmatch(r"(\S+) \[(\S+), (\S+)\]", printed)
    return found is not None and all(
        _reports(part, row[column], cell.digits)
        for part, column in zip(found.groups(), _columns(cell), strict=True)
    )


def _columns(cell: Cell) -> tuple[str, ...]:
    return (cell.column, f"{cell.column}_low", f"{cell.column}_high") if cell.interval else (cell.column,)


def _per_summary(rate_summaries: pd.DataFrame) -> pd.DataFrame:
    """A row per family, group and rate; value, low and high of each summary as <summary>, <summary>_low and
    <summary>_high."""
    keys = [*FAMILY, "perturbation", "group", "rate_percent", "n_seeds"]
    shown = rate_summaries[
        (rate_summaries["subset"] == "all") & rate_summaries["summary"].isin(SHOWN_SUMMARIES)
    ]
    wide = shown.set_index([*keys, "summary"])[["value", "low", "high"]].unstack("summary")
    wide.columns = [summary if stat == "value" else f"{summary}_{stat}" for stat, summary in wide.columns]
    return wide.reset_index()


def _of_family(table: pd.DataFrame, family: dict[str, object]) -> pd.DataFrame:
    return table[np.logical_and.reduce([table[column] == value for column, value in family.items()])]


def _check_table(
    rows: pd.DataFrame, lines: list[str], keys: dict[str, Cell], values: dict[str, Cell], *, where: str
) -> list[int]:
    """Every cell of a markdown table (`lines`, header first) against the one row of `rows` its key cells
    name; returns the index of each row reported."""
    header, *body = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    assert header == [*keys, *values], where
    assert set(body[0]) == {"---"}, where
    reported = []
    for printed in (dict(zip(header, line, strict=True)) for line in body[1:]):
        named = [
            all(_reports_cell(printed[h], row, c) for h, c in keys.items()) for _, row in rows.iterrows()
        ]
        assert sum(named) == 1, f"{where}: {sum(named)} rows of the analysis table match {printed}"
        row = rows[named].iloc[0]
        reported.append(rows.index[named][0])
        for name, cell in values.items():
            held = ", ".join(f"{c} = {row[c]!s}" for c in _columns(cell))
            assert _reports_cell(printed[name], row, cell), (
                f"{where}, row {printed}: {name!r} says {printed[name]!r}, the table holds {held}"
            )
    return reported


VERDICT = re.compile(
    r"(?P<words>transition \((?P<shape>step|ramp)\)|no transition detected \(strongest candidate) "
    r"between (?P<low>\S+) % and (?P<high>\S+) %\)?(?:, height (?P<jump>\S+))?"
    r"(?P<epochs>; the stopping epoch changes there too, so the schedule may cause it)?"
    r"(?:; a step larger than (?P<mde_search>\S+) would have been found with 80 % power"
    r"|; at the claimed place a step larger than (?P<mde_claimed_only>\S+) would likely be found)?"
    r"(?P<one> \(one seed: within one model\))? \(search p = (?P<p>\S+), Holm p = (?P<holm>\S+)\)\."
    r"(?: At the paper's place \(1\.25 % to 1\.43 %, tested alone\): "
    r"(?:a step there|no step there detected); step beyond the trend (?P<claimed>.+), "
    r"p = (?P<claimed_p>\S+); this test finds a step of (?P<mde_claimed>\S+) or more with 80 % power\.)?"
)
GAP_LINE = re.compile(
    r"- Once the starting gap is removed \(only images fit at (?:sigma|level) 0\), mislabelled minus clean "
    r"area under "
    r"the changed-fraction curve, mean over (?P<n_rates>\d+) non-zero rates and (?P<n_seeds>\d+) seeds: "
    r"(?P<estimate>.+), p = (?P<p>\S+) "
    r"\((?:seeds|one seed: the interval covers the images of one model only)\): "
    r"(?:no difference detected; a difference of (?P<mde>\S+) or more would be found with 80 % power|"
    r"mislabelled images change (?:more|less))\."
)


def _check_transition(line: str, transitions: pd.DataFrame, perturbation: str) -> int:
    """A "- curve, summary: verdict" line against its row of transitions.csv (of one family and
    perturbation); returns the row's index."""
    curves = {name: curve for curve, name in curve_names(perturbation).items()}
    name, said = next((name, line[len(name) + 4 :]) for name in curves if line.startswith(f"- {name}: "))
    subset, group, summary = curves[name]
    named = transitions[
        (transitions["subset"] == subset)
        & (transitions["group"] == group)
        & (transitions["summary"] == summary)
    ]
    assert len(named) == 1, line
    row = named.iloc[0]
    if not row["tested"]:
        assert said == f"not tested: {row['reason']}.", line
        return named.index[0]
    stated = VERDICT.fullmatch(said)
    assert stated, line
    assert stated["words"].startswith("transition") == bool(row["detected"]), line
    assert _reports(stated["low"], row["rate_low_percent"]) and _reports(
        stated["high"], row["rate_high_percent"]
    )
    if row["detected"]:
        assert stated["shape"] == row["shape"] and _reports(stated["jump"], row["jump"]), line
        assert bool(stated["epochs"]) == bool(row["epochs_change"] is True), line
    elif stated["mde_search"] is not None:
        assert _reports(stated["mde_search"], row["mde_search"], 2), line
    elif stated["mde_claimed_only"] is not None:
        assert math.isnan(row["mde_search"]) and _reports(stated["mde_claimed_only"], row["mde_claimed"], 2)
    assert bool(stated["one"]) == (row["basis"] == "one model"), line
    assert _reports(stated["p"], row["p_value"], 2) and _reports(stated["holm"], row["p_holm"], 2), line
    if stated["claimed"] is not None:
        low, high = row["claimed_low"], row["claimed_high"]
        claimed = pd.Series({"claimed": row["claimed_estimate"], "claimed_low": low, "claimed_high": high})
        assert _reports_cell(stated["claimed"], claimed, Cell("claimed", interval=True)), line
        assert _reports(stated["claimed_p"], row["claimed_p"], 2), line
        assert _reports(stated["mde_claimed"], row["mde_claimed"]), line
    else:
        assert pd.isna(row["claimed_p"]), line
    return named.index[0]


def _check_gap(line: str, overall: pd.DataFrame) -> int:
    """A gap_overall line against the family's one row."""
    assert len(overall) == 1, line
    row = overall.iloc[0]
    stated = GAP_LINE.fullmatch(line)
    assert stated, line
    assert int(stated["n_rates"]) == row["n_rates"] and int(stated["n_seeds"]) == row["n_seeds"], line
    assert _reports_cell(stated["estimate"], row.rename({"low": "estimate_low", "high": "estimate_high"}),
                         Cell("estimate", interval=True)), line  # fmt: skip
    assert _reports(stated["p"], row["p_value"], 2), line
    assert (stated["mde"] is None) == (row["p_value"] < 0.05), line
    if stated["mde"] is not None:
        assert _reports(stated["mde"], row["mde"]), line
    return overall.index[0]


def _check_summary(text: str, analysis: dict[str, pd.DataFrame]) -> int:
    """Every number of summary.md `text` against the cell of `analysis` (tables by name) it reports: table
    cells by their row's key cells and their column, within the family and (for the sections of one
    perturbation) the perturbation of their headings; transition lines by perturbation, group and summary.
    Returns the count of numbers checked, which is every number outside the section headings."""
    analysis = {**analysis, "curve_summaries": _per_summary(analysis["rate_summaries"])}
    lines = text.splitlines()
    reported: dict[str, list[int]] = {
        name: [] for name in ["transitions", "gap_overall", *(t for t, _, _ in SUMMARY_TABLES.values())]
    }
    checked, families = 0, []  # numbers compared with their cell; family headings
    family = section = ""
    perturbation: str | None = None  # of the current section, if it is one perturbation's
    for number, line in enumerate(lines):
        if line.startswith("## "):
            found = re.fullmatch(FAMILY_HEADING, line)
            assert found, line
            family, section = line, ""
            families.append(found.groupdict() | {"variant": found["variant"] or "all"})
            families[-1] |= {"width": int(found["width"]), "train_size": int(found["train_size"])}
            checked += len(NUMBER.findall(line))
        elif line.startswith("### "):
            section = line.removeprefix("### ")
            found = PER_PERTURBATION.fullmatch(section)
            perturbation = found["perturbation"] if found else None
        elif line.startswith("|") and not lines[number - 1].startswith("|"):
            table = list(itertools.takewhile(lambda line: line.startswith("|"), lines[number:]))
            name, keys, values = next(
                spec for title, spec in SUMMARY_TABLES.items() if section.startswith(title)
            )
            reported[name] += _check_table(
                _of_family(analysis[name], _where(families[-1], perturbation)),
                table,
                keys,
                _values(values, perturbation),
                where=f"{family} / {section}",
            )
            checked += sum(len(NUMBER.findall(row)) for row in table)
        elif line.startswith("- Once the starting gap"):
            assert section.startswith("Verdict: ") and perturbation, line
            reported["gap_overall"].append(
                _check_gap(line, _of_family(analysis["gap_overall"], _where(families[-1], perturbation)))
            )
            checked += len(NUMBER.findall(line))
        elif line.startswith("- "):
            assert section.startswith("Verdict: ") and perturbation, line
            transitions = _of_family(analysis["transitions"], _where(families[-1], perturbation))
            reported["transitions"].append(_check_transition(line, transitions, perturbation))
            checked += len(NUMBER.findall(line))
        elif line == ONE_SEED_SUMMARY:
            checked += len(NUMBER.findall(line))
    headings = sorted(tuple(family[c] for c in FAMILY) for family in families)
    assert headings == sorted(analysis["training"].groupby(list(FAMILY)).groups), headings
    for name, indices in reported.items():
        assert sorted(indices) == list(analysis[name].index), (
            f"summary.md does not report each row of {name} once"
        )
    numbers = [token for line in lines if not line.startswith("### ") for token in NUMBER.findall(line)]
    assert checked == len(numbers)
    return checked


def _where(family: dict[str, object], perturbation: str | None) -> dict[str, object]:
    """The cells that select a section's rows: its family's, and its perturbation's if it has one."""
    return family if perturbation is None else family | {"perturbation": perturbation}


def _analysis(study: Path) -> dict[str, pd.DataFrame]:
    return {path.stem: pd.read_csv(path) for path in (study / "analysis").glob("*.csv")}


def test_every_number_in_the_summary_is_the_table_cell_it_reports(report: Path, study: Path) -> None:
    assert _check_summary((study / "summary.md").read_text(), _analysis(study)) > 100


def test_tested_transitions_in_the_summary_report_their_row(report: Path, study: Path) -> None:
    """The tiny study has too few rates to test a transition: two rows of its table made tested here."""
    tables = _analysis(study)
    transitions = tables["transitions"].astype(
        {"smooth_model": object, "shape": object, "basis": object, "epochs_change": object}
    )
    tested = {"tested": True, "reason": "", "rate_low": 0.05, "rate_high": 0.1, "rate_low_percent": 5.0}
    tested |= {"rate_high_percent": 10.0, "smooth_model": "linear in log rate", "basis": "seeds"}
    first = transitions.index[(transitions["subset"] == "all") & (transitions["group"] == "mislabelled")][0]
    second = transitions.index[(transitions["subset"] == "fit") & (transitions["group"] == "clean")][-1]
    changes = {
        first: {"detected": True, "shape": "ramp", "jump": 0.1234, "p_value": 0.001234, "p_holm": 0.007404},
        second: {"detected": False, "shape": "step", "jump": -2.5, "p_value": 0.5, "p_holm": 1.0},
    }
    changes[first] |= {"epochs_change": True, "mde_search": 0.05}
    changes[second] |= {"epochs_change": False, "mde_search": 0.0789}
    changes[second] |= {"claimed_estimate": 0.02, "claimed_low": -0.01, "claimed_high": 0.05}
    changes[second] |= {"claimed_p": 0.2345, "mde_claimed": 0.0456}
    for row, changed in changes.items():
        for column, value in {**tested, **changed}.items():
            transitions.loc[row, column] = value
    text = "\n".join(summary_lines({**tables, "transitions": transitions}))
    assert _check_summary(text, {**tables, "transitions": transitions}) > 100
    assert (
        "- mislabelled images, area under the changed-fraction curve: transition (ramp) between 5 %" in text
    )
    assert "a step larger than 0.079 would have been found with 80 % power" in text
    assert "step beyond the trend 0.02 [-0.01, 0.05], p = 0.23" in text


def test_image_curves_reproduce_the_study_curves(report: Path, study: Path) -> None:
    ours = pd.read_csv(study / "analysis" / "image_curves.csv")
    ours = ours[ours["subset"] == "all"]
    theirs = pd.read_csv(study / "curves.csv").rename(columns={"sigma": "level"})  # as written before
    if "perturbation" not in theirs:  # perturbations: blur
        theirs["perturbation"] = "blur"
    keys = ["rate", "seed", "perturbation", "group", "level"]
    merged = ours.merge(theirs, on=keys, suffixes=("", "_study"))
    assert len(merged) == len(theirs[theirs["n"] > 0])
    assert (merged["changed"] == merged["changed_study"]).all() and (merged["n"] == merged["n_study"]).all()


def test_report_without_data_files_replaces_the_examples_by_a_note(study: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(study, copy, symlinks=True)
    shutil.rmtree(copy / "figures")
    page = write_report(copy, data_dir=tmp_path / "no-data", n_bootstrap=20).read_text()
    assert "Example images not shown" in page
    assert not list((copy / "figures").glob("examples-*"))
    assert page.count("<img ") == len(list((copy / "figures").glob("*.png")))


@pytest.fixture(scope="module")
def two_perturbations(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic study probed under blur and noise (no data files: the example images become a note),
    with its report written."""
    out = write_study(tmp_path_factory.mktemp("perturbations") / "out", perturbations=("blur", "noise"))
    write_report(out, data_dir=out / "no-data", n_bootstrap=20)
    return out


def test_each_perturbation_gets_its_blocks_and_verdict(two_perturbations: Path) -> None:
    page = re.sub(r'src="data:[^"]*"', "", (two_perturbations / "report.html").read_text())  # the text
    sections = dict(re.findall(r'<section id="([^"]+)">(.*?)</section>', page, flags=re.DOTALL))
    assert list(sections) == [*SECTIONS, "methods"]
    for perturbation in ("blur", "noise"):
        heading = f"<h3>{html.escape(perturbation_heading(perturbation))}</h3>"
        for anchor in ("curves", "gap-adjusted", "transition", "smoothness", "test-set"):
            assert sections[anchor].count(heading) == 1, (anchor, perturbation)
        for figure in ("summaries", "gap-adjusted", "flip-level", "test"):
            assert (
                two_perturbations / "figures" / f"{figure}-{perturbation}-mnist-resnet18w16-n6000.png"
            ).exists()
    assert "Curves: how predictions change under blur and noise" in page
    assert "blur, level = blur sigma (pixels)" in page  # the registry's level name
    assert f"noise, level = {html.escape(figures.level_label('noise'))}" in page
    assert "Example images not shown" in page  # no data files; blur's block would show them
    _, blur, noise = re.split(
        "|".join(re.escape(f"<h3>{html.escape(perturbation_heading(p))}</h3>") for p in ("blur", "noise")),
        sections["curves"],
    )
    assert "half sigma = sigma (px) by" in blur and "half level = level by" in noise and "sigma" not in noise
    assert "Starting gap: errors at level 0" in page  # not blur's sigma 0 alone
    summary = (two_perturbations / "summary.md").read_text()
    for perturbation in ("blur", "noise"):
        for title in ("Gap-adjusted", "Curve summaries", "Verdict"):
            assert summary.count(f"### {title}: {perturbation}") == 1
    assert "| half sigma (px) |" in summary and f"| {half_column('noise')} |" in summary
    assert _check_summary(summary, _analysis(two_perturbations)) > 100


def test_examples_are_drawn_for_blur_only(two_perturbations: Path, data_root: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(two_perturbations, copy)
    page = write_report(copy, data_dir=data_root, n_bootstrap=20).read_text()
    assert "Examples shown for blur (not for noise)." in page
    assert [path.name for path in (copy / "figures").glob("examples-*.png")] == [
        "examples-mnist-resnet18w16-n6000.png"
    ]


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        message = "Debian's chromium is not installed (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def _browse(*arguments: str, profile: Path) -> str:
    """Run headless Chromium with `arguments`, at most 60 s (then its whole process group is killed)."""
    command = [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *arguments]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"chromium did not finish within 60 s: {' '.join(command)}")
    assert process.returncode == 0, stderr[-2000:]
    return stdout


# Run in the page once it has loaded: count the images that failed to decode and the sections whose only
# text is their heading, and write the verdict into the DOM for --dump-dom.
CHECK = """<script>
window.addEventListener("load", () => {
  const images = [...document.images];
  const sections = [...document.querySelectorAll("section")];
  const verdict = {
    images: images.length,
    broken: images.filter((image) => !(image.complete && image.naturalWidth > 0)).length,
    sections: sections.map((section) => section.id),
    empty: sections.filter((section) =>
      section.innerText.trim().length <= section.querySelector("h2").innerText.trim().length + 20
    ).map((section) => section.id),
  };
  const out = document.createElement("pre");
  out.id = "verdict";
  out.textContent = JSON.stringify(verdict);
  document.body.appendChild(out);
});
</script>"""


def test_report_renders_in_headless_chromium(report: Path, study: Path, tmp_path: Path) -> None:
    screenshot = study / "report.png"
    _browse(f"--screenshot={screenshot}", "--window-size=1280,4000", report.as_uri(), profile=tmp_path / "a")
    header = screenshot.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    assert (int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")) == (1280, 4000)

    checked = tmp_path / "checked.html"
    checked.write_text(report.read_text().replace("</body>", CHECK + "</body>"))
    dom = _browse("--virtual-time-budget=10000", "--dump-dom", checked.as_uri(), profile=tmp_path / "b")
    found = re.search(r'<pre id="verdict">(.*?)</pre>', dom)
    assert found, dom[-2000:]
    verdict = json.loads(found.group(1))
    assert verdict["images"] == report.read_text().count("<img ") > 5
    assert verdict["broken"] == 0
    assert verdict["sections"] == [*SECTIONS, "methods"] and verdict["empty"] == []
