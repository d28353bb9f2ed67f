"""`write_report` on a tiny real study (2 seeds, rates 0, 5 % and 10 %, one epoch: every run misses the
target), and the report rendered in headless Chromium."""

import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from overparam.cli import main
from overparam.report import write_report

ANALYSIS_TABLES = (
    "training",
    "starting_gap",
    "image_curves",
    "summaries",
    "gap_adjusted",
    "rate_summaries",
    "jumps",
    "transitions",
)
SECTIONS = ("setup", "training", "starting-gap", "curves", "gap-adjusted", "transition", "test-set", "runs")
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
    assert {p.stem.rsplit("-mnist", 1)[0] for p in pngs} >= {
        "examples",
        "training",
        "summaries",
        "gap-adjusted",
    }
    assert all(p.with_suffix(".svg").stat().st_size > 0 for p in pngs)
    page = report.read_text()
    sources = re.findall(r'(?:src|href)="([^"#][^"]*)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert len(sources) == len(pngs)  # every figure embedded once
    assert [m for m in re.findall(r'<section id="([^"]+)"', page)] == [*SECTIONS, "methods"]
    assert "MISSED the target" in page and page.count('<tr class="missed">') == 2 * 6  # two tables of 6 runs
    assert "Source: analysis/starting_gap.csv" in page


def test_every_number_in_the_summary_is_in_an_analysis_table(report: Path, study: Path) -> None:
    values = np.concatenate(
        [
            pd.read_csv(path).select_dtypes("number").to_numpy(dtype=float).ravel()
            for path in (study / "analysis").glob("*.csv")
        ]
    )
    values = values[np.isfinite(values)]
    text = (study / "summary.md").read_text()
    numbers = re.findall(r"(?<![\w.])-?\d+(?:\.\d+)?(?:e[-+]?\d+)?", text)
    assert len(numbers) > 50
    for token in numbers:
        mantissa, _, exponent = token.partition("e")
        decimals = len(mantissa.partition(".")[2])
        tolerance = 0.5 * 10.0 ** (int(exponent or 0) - decimals)
        assert np.any(np.abs(values - float(token)) <= tolerance * (1 + 1e-9)), token


def test_image_curves_reproduce_the_study_curves(report: Path, study: Path) -> None:
    ours = pd.read_csv(study / "analysis" / "image_curves.csv")
    ours = ours[ours["subset"] == "all"]
    theirs = pd.read_csv(study / "curves.csv")
    keys = ["rate", "seed", "group", "sigma"]
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
