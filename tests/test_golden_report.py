"""Golden test: what a user sees from `overparam reproduce --preset smoke` stays byte for byte the same.

The smoke preset runs in process as a user runs it (no flags but where its files go; PyTorch pinned to 2 CPU
threads; a fresh run store under tmp_path; skipped where CUDA is available, since it would train there).
Every file of its output folder that a user reads is compared with its normalised copy under
tests/fixtures/smoke/: the study tables (runs, metrics, mislabels, curves, flips .csv), config.json,
summary.md, report.html and analysis/*.csv byte for byte after normalisation, and every figure (figures/*.png
by its decoded pixels, *.svg by its normalised text) by a digest kept in figures.json.

Normalisation masks exactly what differs between two runs of the same code on the same machine, or between
machines and installs, and nothing else:

- timings: the `*seconds` columns of the CSV tables (train_seconds in runs.csv, seconds in metrics.csv);
- the start time (config.json `started`, the report's "started ..." line) and the command line (config.json
  `command`, the report's "with: ..." line; under pytest it is pytest's own argv);
- the paths of this test's temporary output folder, run store and data folder (config.json, the report's
  settings table), as <out>, <store>, <data>;
- the machine and install: config.json `environment` (versions, Python, platform, processor, device,
  threads, git commit; every value masked, the keys kept) and in the report's "Environment:" line each
  version, the platform and the git commit;
- figures: a PNG embedded in report.html is replaced by the SHA-256 of its decoded pixels (so matplotlib's
  metadata does not count, but every pixel does); an SVG's <dc:date>, its generator's version and the
  random ids matplotlib gives clip paths, markers and images (renamed in order of appearance).

To change the golden copy deliberately (a change a user is meant to see), rewrite it and review the diff:

    OVERPARAM_UPDATE_GOLDEN=1 python -m pytest tests/test_golden_report.py  # this machine's copy
    git diff tests/fixtures/smoke

The numbers depend on the machine (CPU kernels, library versions) and on PyTorch's thread count (a run
with 1 thread differs from one with 2 in the last digits of metrics.csv's loss): the copies were made on the
project's 2-core x86 machines with 2 threads, which the test pins, one per CPU capability PyTorch reports
(tests/fixtures/smoke/avx2, .../avx512); on a machine of another capability the test is skipped, saying so.
"""

import base64
import difflib
import hashlib
import html
import io
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import matplotlib.image
import pytest
import torch

from overparam.cli import main

# One copy per set of CPU kernels PyTorch dispatches to (its CPU capability: AVX2, AVX512, ...): the same code
# rounds differently on each, in the last digits of the loss and hence in a few flips.
KERNELS = torch.backends.cpu.get_cpu_capability().lower()
GOLDEN = Path(__file__).parent / "fixtures" / "smoke" / KERNELS
UPDATE = os.environ.get("OVERPARAM_UPDATE_GOLDEN") == "1"
THREADS = 2  # PyTorch's CPU threads while training: the rounding, so the tables, depend on it
TABLES = ("runs.csv", "metrics.csv", "mislabels.csv", "curves.csv", "flips.csv")
PAGES = ("config.json", "summary.md", "report.html")
FIGURES = "figures.json"  # digests of OUT/figures/*
DIFF_LINES = 80  # of a failing file's unified diff, shown in the message


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> dict[str, str]:
    """Run the smoke preset once; every compared file's normalised text by its path relative to OUT
    (figures.json: the figures' digests). With OVERPARAM_UPDATE_GOLDEN=1, also rewrite the golden copy."""
    if torch.cuda.is_available():
        pytest.skip("the golden copy is of a CPU run; the smoke preset would train on the GPU here")
    if not UPDATE and not GOLDEN.exists():
        pytest.skip(f"no golden copy for {KERNELS} kernels; make one with OVERPARAM_UPDATE_GOLDEN=1")
    root = tmp_path_factory.mktemp("golden")
    out, store = root / "out", root / "store"
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        placement = ["--data-dir", str(data_root), "--store", str(store), "--out", str(out)]
        assert main(["reproduce", "--preset", "smoke", *placement]) == 0
    finally:
        torch.set_num_threads(threads)
    produced = normalised_outputs(out, paths={"<out>": out, "<store>": store, "<data>": data_root})
    if UPDATE:
        shutil.rmtree(GOLDEN, ignore_errors=True)
        for name, text in produced.items():
            (GOLDEN / name).parent.mkdir(parents=True, exist_ok=True)
            (GOLDEN / name).write_text(text)
    return produced


def normalised_outputs(out: Path, *, paths: dict[str, Path]) -> dict[str, str]:
    """The compared files of the study in `out`, normalised (module docstring)."""
    spelled = {str(path): name for name, path in paths.items()}
    spelled |= {str(path.resolve()): name for name, path in paths.items()}
    produced = {}
    for name in [*TABLES, *sorted(f"analysis/{p.name}" for p in (out / "analysis").glob("*.csv"))]:
        produced[name] = mask_seconds(masked_paths((out / name).read_text(), spelled), name)
    produced["config.json"] = masked_config((out / "config.json").read_text(), spelled)
    produced["summary.md"] = masked_paths((out / "summary.md").read_text(), spelled)
    produced["report.html"] = masked_report((out / "report.html").read_text(), spelled)
    produced[FIGURES] = json.dumps(figure_digests(out / "figures"), indent=2) + "\n"
    return produced


def masked_paths(text: str, spelled: dict[str, str]) -> str:
    for path, name in sorted(spelled.items(), key=lambda item: -len(item[0])):  # a longer path first
        text = text.replace(path, name)
    return text


def mask_seconds(text: str, name: str) -> str:
    """`text` (a CSV table) with every non-empty cell of a column whose name ends in "seconds" masked."""
    lines = text.split("\n")
    header = lines[0].split(",")
    timed = [number for number, column in enumerate(header) if column.endswith("seconds")]
    if not timed:
        return text
    assert '"' not in text, f"{name}: quoted cells; the normaliser splits rows on commas"
    rows = []
    for line in lines[1:]:
        cells = line.split(",")
        if len(cells) == len(header):
            cells = [("<seconds>" if n in timed and cell else cell) for n, cell in enumerate(cells)]
        rows.append(",".join(cells))
    return "\n".join([lines[0], *rows])


def masked_config(text: str, spelled: dict[str, str]) -> str:
    """config.json with its start time, command line and machine facts masked, paths named."""
    record = json.loads(text)
    assert text == json.dumps(record, indent=2) + "\n", "config.json is no longer written as json indent 2"
    record["started"] = "<started>"
    record["command"] = ["<command>"]
    record["environment"] = _masked_values(record["environment"])
    return masked_paths(json.dumps(record, indent=2) + "\n", spelled)


def _masked_values(value: object) -> object:
    if isinstance(value, dict):
        return {key: _masked_values(inner) for key, inner in value.items()}
    return "<machine>"


STARTED = re.compile(r"started [^ <]+ with: [^<]*</p>")
ENVIRONMENT = re.compile(r"<p>Environment: ([^<;]*); ([^<]*), device ([^<,]*), git commit ([^<.]*)\.</p>")
EMBEDDED_PNG = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]*)"')


def masked_report(text: str, spelled: dict[str, str]) -> str:
    """report.html with its start time, command line, versions, platform and git commit masked, paths named,
    each embedded PNG replaced by the digest of its pixels."""
    assert len(STARTED.findall(text)) == 1, "the report's 'started ... with: ...' line is no longer there"
    text = STARTED.sub("started <started> with: <command></p>", text)
    assert len(ENVIRONMENT.findall(text)) == 1, "the report's 'Environment: ...' line is no longer there"

    def environment(match: re.Match[str]) -> str:
        software = ", ".join(f"{entry.rsplit(' ', 1)[0]} <version>" for entry in match[1].split(", "))
        return f"<p>Environment: {software}; <platform>, device {match[3]}, git commit <commit>.</p>"

    text = ENVIRONMENT.sub(environment, text)
    text = masked_paths(text, {html.escape(path): name for path, name in spelled.items()})
    return EMBEDDED_PNG.sub(
        lambda match: f'src="data:image/png;pixels-sha256,{_pixels(base64.b64decode(match[1]))}"', text
    )


def _pixels(png: bytes) -> str:
    """The SHA-256 of a PNG's decoded pixels, prefixed by their shape."""
    pixels = matplotlib.image.imread(io.BytesIO(png), format="png")
    shape = "x".join(map(str, pixels.shape))
    return f"{shape}:{hashlib.sha256(pixels.tobytes()).hexdigest()}"


SVG_DATE = re.compile(r"<dc:date>[^<]*</dc:date>")
SVG_GENERATOR = re.compile(r"Matplotlib v[^,<]*")
SVG_ID = re.compile(r'id="([a-z]+[0-9a-f]{10})"')


def normalised_svg(text: str) -> str:
    """An SVG without its date and generator version, its random ids numbered in order of appearance."""
    text = SVG_GENERATOR.sub("Matplotlib <version>", SVG_DATE.sub("<dc:date/>", text))
    ids = dict.fromkeys(SVG_ID.findall(text))
    for number, name in enumerate(ids):
        text = re.sub(rf"\b{name}\b", f"{re.sub('[0-9a-f]{10}$', '', name)}-{number}", text)
    return text


def figure_digests(folder: Path) -> dict[str, str]:
    digest: dict[str, Callable[[Path], str]] = {
        ".png": lambda path: _pixels(path.read_bytes()),
        ".svg": lambda path: hashlib.sha256(normalised_svg(path.read_text()).encode()).hexdigest(),
    }
    return {path.name: digest[path.suffix](path) for path in sorted(folder.iterdir())}


def golden_names() -> list[str]:
    """The files of the golden copy, by path relative to it."""
    return sorted(str(p.relative_to(GOLDEN)) for p in GOLDEN.rglob("*") if p.is_file())


def _diff(expected: str, actual: str, name: str) -> str:
    if name.endswith(".html"):  # one long line per section: a line per tag instead
        expected, actual = expected.replace("><", ">\n<"), actual.replace("><", ">\n<")
    lines = list(
        difflib.unified_diff(
            expected.splitlines(), actual.splitlines(), f"golden {name}", f"now {name}", lineterm="", n=2
        )
    )
    more = f"\n... {len(lines) - DIFF_LINES} more lines" if len(lines) > DIFF_LINES else ""
    return "\n".join(lines[:DIFF_LINES]) + more


def test_the_smoke_study_writes_the_golden_files(smoke: dict[str, str]) -> None:
    if UPDATE:
        pytest.skip(f"OVERPARAM_UPDATE_GOLDEN=1: rewrote {GOLDEN}; review it with git diff")
    assert golden_names(), f"no golden copy in {GOLDEN}; write it with OVERPARAM_UPDATE_GOLDEN=1"
    assert sorted(smoke) == golden_names(), "the study writes other files than the golden copy holds"


@pytest.mark.parametrize("name", [*TABLES, *PAGES, FIGURES, "analysis"])
def test_output_is_byte_identical_to_the_golden_copy(smoke: dict[str, str], name: str) -> None:
    if UPDATE:
        pytest.skip(f"OVERPARAM_UPDATE_GOLDEN=1: rewrote {GOLDEN}; review it with git diff")
    names = [n for n in golden_names() if n.startswith("analysis/")] if name == "analysis" else [name]
    assert names, f"no golden {name}; write the golden copy with OVERPARAM_UPDATE_GOLDEN=1"
    different = [n for n in names if smoke.get(n) != (GOLDEN / n).read_text()]
    message = "\n\n".join(_diff((GOLDEN / n).read_text(), smoke.get(n, ""), n) for n in different)
    assert not different, (
        f"{', '.join(different)} differ from the golden copy in {GOLDEN} (normalised; see the module "
        f"docstring). If the change is meant, rewrite it with OVERPARAM_UPDATE_GOLDEN=1.\n{message}"
    )
