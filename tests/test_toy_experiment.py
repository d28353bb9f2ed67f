"""An experiment defined entirely in this file (a step that needs the run's training, a study table, an
analysis table, a report section and a command) joins the study through the registry alone: it appears in
`overparam --help`, runs in-process and under --jobs 2, is cached and retried like any step, and its section
renders in the report."""

import argparse
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
import pytest

from overparam import registry
from overparam.cli import main
from overparam.config import RunConfig
from overparam.execution import TrainStep
from overparam.html_kit import Page, paragraph
from overparam.registry import Command, Experiment, ReportInputs, Section, Services
from overparam.store.files import file_record, read_json, with_keys, write_csv
from overparam.store.steps import Step, StepContext

TINY = ["--preset", "smoke", "--train-size", "200", "--test-size", "100", "--rates", "0", "0.05"]
TINY += ["--max-epochs", "1", "--sigmas", "0", "1"]
FAIL_ONCE = "OVERPARAM_TEST_TOY_FAIL"  # a marker file: the toy step fails while it exists


@dataclass(frozen=True)
class ToyCount(Step):
    """Reads the trained run's record and writes one row: how many images it mislabelled, and its pid."""

    run: RunConfig
    kind = "toy-count"
    tables: ClassVar[dict[str, str]] = {"toy": "toy.csv"}

    def step_id(self) -> str:
        return f"{self.run.run_id()}/toy"

    def needs(self) -> tuple[Step, ...]:
        return (TrainStep(self.run),)

    def compute(self, context: StepContext) -> dict[str, Any]:
        marker = os.environ.get(FAIL_ONCE)
        if marker and Path(marker).exists():
            raise RuntimeError("toy step interrupted")
        trained = read_json(TrainStep(self.run).record(context.store))["result"]
        row = {"n_mislabelled": trained["n_mislabelled"], "pid": os.getpid()}
        path = context.folder / "toy.csv"
        write_csv(with_keys(self.run.keys(), pd.DataFrame([row])), path)
        return file_record([path])


def toy_tables(study: Any, *, n_bootstrap: int, seed: int) -> dict[str, pd.DataFrame]:
    toy = pd.read_csv(study.out / "toy.csv")
    return {"toy_by_rate": toy.groupby("rate", as_index=False)["n_mislabelled"].sum()}


def toy_section(page: Page, inputs: ReportInputs) -> None:
    rows = inputs.tables["toy_by_rate"]
    text = ", ".join(
        f"{rate:g}: {count}" for rate, count in zip(rows["rate"], rows["n_mislabelled"], strict=True)
    )
    page.section("toy", "Toy experiment").append(paragraph(f"mislabelled images by rate: {text}"))


def toy_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--greeting", default="hello")


def toy_command(arguments: argparse.Namespace, services: Services) -> int:
    print(f"toy says {arguments.greeting}")
    return 0


TOY = Experiment(
    name="toy",
    steps=lambda run: [ToyCount(run)],
    commands=(Command(name="toy", help="a toy experiment", add_arguments=toy_arguments, run=toy_command),),
    tables=toy_tables,
    sections=(Section(order=25, write=toy_section),),
)


@pytest.fixture
def toy() -> Iterator[Experiment]:
    with registry.registered(TOY) as experiment:
        yield experiment


def test_the_toy_command_is_in_the_help_and_runs(toy: Experiment, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "a toy experiment" in capsys.readouterr().out
    assert main(["toy", "--greeting", "hi"]) == 0
    assert "toy says hi" in capsys.readouterr().out


def test_an_unregistered_experiment_is_not_there(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "toy" not in capsys.readouterr().out


@pytest.mark.parametrize("jobs", [1, 2])
def test_the_toy_step_runs_is_cached_retried_and_reported(
    toy: Experiment,
    jobs: int,
    data_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    marker = tmp_path / "fail"
    marker.touch()
    monkeypatch.setenv(FAIL_ONCE, str(marker))
    command = ["reproduce", *TINY, "--jobs", str(jobs), "--data-dir", str(data_root)]
    command += ["--store", str(tmp_path / "store"), "--out", str(tmp_path / "out")]
    assert main([*command, "--no-report"]) == 1  # the toy steps failed; training and probes finished
    assert "toy step interrupted" in caplog.text
    assert not (tmp_path / "out" / "toy.csv").exists()

    marker.unlink()
    caplog.clear()
    with caplog.at_level("INFO"):
        assert main(command) == 0
    assert "trained mnist" not in caplog.text  # only the toy steps were computed again
    toy_table = pd.read_csv(tmp_path / "out" / "toy.csv")
    runs = pd.read_csv(tmp_path / "out" / "runs.csv")
    assert sorted(toy_table["n_mislabelled"]) == sorted(runs["n_mislabelled"]) == [0, 10]
    if jobs == 2:
        assert (toy_table["pid"] != os.getpid()).all()  # computed in the pool's workers
    else:
        assert (toy_table["pid"] == os.getpid()).all()
    by_rate = pd.read_csv(tmp_path / "out" / "analysis" / "toy_by_rate.csv")
    assert by_rate["n_mislabelled"].tolist() == [0, 10]
    page = (tmp_path / "out" / "report.html").read_text()
    assert "Toy experiment" in page and "mislabelled images by rate: 0: 0, 0.05: 10" in page

    stamp = (tmp_path / "store").rglob("toy/step.json")
    before = {path: path.stat().st_mtime_ns for path in stamp}
    assert main([*command, "--no-report"]) == 0  # everything cached: no step's record is written again
    assert {path: path.stat().st_mtime_ns for path in before} == before and len(before) == 2
