"""A study: the runs of one StudyConfig, or of several for a sweep, executed in the shared run store and
gathered into the tidy tables of the study's output folder (README, "Outputs")."""

import io
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from overparam.config import ConfigError, RunConfig, StudyConfig
from overparam.data import resolve_data_dir
from overparam.execution import run_steps, steps_of
from overparam.runs import load_splits, prepare
from overparam.runtime import environment, select_device
from overparam.store.executors import ExecutorOptions, execute_steps
from overparam.store.files import (
    STUDY_TABLES,
    CorruptFileError,
    RunPaths,
    read_json,
    read_verified,
    remove_stale_temporaries,
    resolve_store,
    run_paths,
    study_table,
    write_csv,
    write_json,
    write_text,
)
from overparam.store.steps import Outcome, RunOptions, Step, with_needs

log = logging.getLogger(__name__)


class RunsFailedError(RuntimeError):
    """Some runs of a study failed; the others finished and are in the tables."""


def default_out(config: StudyConfig, preset: str) -> Path:
    return Path("runs") / f"{preset}-{config.dataset}-{config.study_id()}"


def run_options(config: StudyConfig, *, progress: bool) -> RunOptions:
    return RunOptions(
        store=str(resolve_store(config.store).resolve()),
        data_dir=config.data_dir,
        download=config.download,
        device=config.device,
        progress=progress,
    )


def open_study(
    *, out: Path, study_id: str, runs: Sequence[RunConfig], options: RunOptions, record: dict[str, Any]
) -> None:
    """Check every run against the data before anything is trained, refuse a folder that holds another
    study, write OUT/config.json and link OUT/runs/<run_id> to each run's folder in the store."""
    existing = out / "config.json"
    previous = read_json(existing).get("study_id") if existing.exists() else study_id
    if previous != study_id:
        raise ConfigError(
            f"{out} already holds a different study (study_id {previous}, this one {study_id}); "
            "choose another --out so its results stay intact"
        )
    for stale in remove_stale_temporaries(out) if out.exists() else ():
        log.info("removed %s, left by a process that died while writing it", stale)
    device = select_device(options.device)
    for run in runs:
        splits = load_splits(
            dataset=run.dataset, data_dir=options.data_dir, download=options.download, device=str(device)
        )
        prepare(run, splits, Path(options.store))
    write_json(
        {
            **record,
            "study_id": study_id,
            "store": options.store,
            "runs": [run.run_id() for run in runs],
            "command": sys.argv,
            "environment": environment(device),
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
        },
        out / "config.json",
    )
    for run in runs:
        link = out / "runs" / run.run_id()
        target = Path(options.store) / run.run_id()
        if link.is_symlink() and link.resolve() == target.resolve():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        os.symlink(target, link, target_is_directory=True)


DEFAULT_VARIANT = "all"  # the variant of a study with a single configuration (reproduce)


@dataclass(frozen=True)
class Unit:
    """One run as a study sees it: the run (its training and a probe per perturbation), and the columns that
    name the study variant it belongs to in every table: `variant` (a sweep's grid point as text, else "all")
    and a sweep's grid values. Two variants may share a run; their probes may differ."""

    run: RunConfig
    labels: dict[str, Any]

    @property
    def probe_key(self) -> tuple[str, ...]:
        return self.run.run_id(), *self.run.probe_ids().values()


def units_of(config: StudyConfig, labels: dict[str, Any] | None = None) -> list[Unit]:
    return [Unit(run, labels or {"variant": DEFAULT_VARIANT}) for run in config.runs()]


def unique_runs(units: Sequence[Unit]) -> list[RunConfig]:
    """Each (trained model, probe) once, in the units' order."""
    return list({unit.probe_key: unit.run for unit in units}.values())


def study_steps(runs: Sequence[RunConfig]) -> list[Step]:
    """What executors execute: every step of every run (a training shared by two runs is one step)."""
    return [step for run in runs for step in steps_of(run)]


def when_runs_end(runs: Sequence[RunConfig], refresh: Callable[[], object]) -> Callable[[Outcome], None]:
    """An `on_outcome` that calls `refresh` each time the last step of a run has an outcome: the tables are
    rewritten once per run, not once per step (each rewrite reads every finished run)."""
    waiting = {run.run_id(): {step.step_id() for step in with_needs(steps_of(run))} for run in runs}

    def ended(outcome: Outcome) -> None:
        finished = []
        for run_id, steps in waiting.items():
            if outcome.step_id in steps:
                steps.discard(outcome.step_id)
                finished += [run_id] if not steps else []
        for run_id in finished:
            del waiting[run_id]
        if finished:
            refresh()

    return ended


def gather_tables(out: Path, *, units: Sequence[Unit], store: Path) -> list[str]:
    """Write OUT/runs.csv, metrics.csv, mislabels.csv, curves.csv and flips.csv from the finished runs, each
    row labelled with its unit's columns. Every file is checked against the digest its record holds as it is
    read; a damaged step is discarded (done again by the next call) and its run id returned."""
    frames: dict[str, list[pd.DataFrame]] = {name: [] for name in STUDY_TABLES}
    damaged = []
    for unit in units:
        run = unit.run
        paths = run_paths(store, run_id=run.run_id(), probe_id=run.probe_id())
        if not paths.training.exists():
            continue
        try:
            found = _read_run(paths, run.probe_ids())
            found |= _read_step_tables(run, store)
        except CorruptFileError as error:
            log.error("damaged %s: %s; it is computed again on the next run", run.run_id(), error)
            damaged.append(run.run_id())
            continue
        for name, frame in found.items():
            frames.setdefault(name, []).append(frame.assign(**unit.labels))
    for name, parts in frames.items():
        if parts:
            write_csv(pd.concat(parts, ignore_index=True), study_table(out, name))
    return damaged


def written_tables(out: Path) -> list[str]:
    """The tables in OUT: the study's own (STUDY_TABLES) in their order, then those its steps added."""
    own = [f"{name}.csv" for name in STUDY_TABLES if (out / f"{name}.csv").exists()]
    return own + sorted(path.name for path in out.glob("*.csv") if path.name not in own)


def _read_run(paths: RunPaths, probe_ids: dict[str, str]) -> dict[str, pd.DataFrame]:
    """A run's rows of every study table that it has finished, read from checked bytes; the probes'
    tables, one per perturbation of `probe_ids` (name -> probe id), in today's columns."""

    def table(record: Path, file: Path) -> pd.DataFrame:
        try:
            return pd.read_csv(io.BytesIO(read_verified(record, file.name)))
        except CorruptFileError:
            record.unlink(missing_ok=True)  # the step is done again by the next call
            raise

    training = read_json(paths.training)
    found = {
        "runs": [pd.DataFrame([training["result"]])],
        "metrics": [table(paths.training, paths.metrics)],
        "mislabels": [table(paths.training, paths.mislabels)],
        "curves": [],
        "flips": [],
    }
    for perturbation, probe_id in probe_ids.items():
        probe = paths.with_probe(probe_id)
        if probe.probe_record.exists():
            for name, file in (("curves", probe.curves), ("flips", probe.flips)):
                found[name].append(probe_columns(table(probe.probe_record, file), perturbation, probe_id))
    return {name: pd.concat(frames, ignore_index=True) for name, frames in found.items() if frames}


def _read_step_tables(run: RunConfig, store: Path) -> dict[str, pd.DataFrame]:
    """The study tables of the run's further steps (label scores, pruning, lottery tickets), each named by
    its step's `tables` (the rows of every step that adds to one table together), once that step is
    finished."""
    found: dict[str, list[pd.DataFrame]] = {}
    for step in steps_of(run):
        record = step.record(store)
        if not step.tables or not record.exists():
            continue
        try:
            for table, name in step.tables.items():
                found.setdefault(table, []).append(pd.read_csv(io.BytesIO(read_verified(record, name))))
        except CorruptFileError:
            record.unlink(missing_ok=True)  # the step is done again by the next call
            raise
    return {table: pd.concat(frames, ignore_index=True) for table, frames in found.items()}


def probe_columns(frame: pd.DataFrame, perturbation: str, probe_id: str) -> pd.DataFrame:
    """A probe's curves.csv or flips.csv with today's columns: a blur probe stored before other
    perturbations existed names its levels `sigma` and `flip_sigma` and has no perturbation or probe_id."""
    frame = frame.rename(columns={"sigma": "level", "flip_sigma": "flip_level"})
    if "perturbation" not in frame:
        at = frame.columns.get_loc("seed") + 1  # after the run's key columns, which end with the seed
        frame.insert(at, "perturbation", perturbation)
        frame.insert(at + 1, "probe_id", probe_id)
    return frame


def finish(
    out: Path,
    outcomes: Sequence[Outcome],
    *,
    write_report: Callable[..., Path] | None,
    data_dir: str | None,
) -> None:
    """Write the report of what finished with `write_report` (none: no report), then raise RunsFailedError
    naming every failed run. A report that fails is one line too (its traceback in OUT/report-error.txt):
    the tables are already written."""
    failed = [o for o in outcomes if o.status == "failed"]
    problems = []
    if write_report is not None and len(failed) < len(outcomes):
        try:
            log.info("report  %s", write_report(out, data_dir=resolve_data_dir(data_dir)))
        except Exception as error:
            write_text(traceback.format_exc(), out / "report-error.txt")
            where = out / "report-error.txt"
            problems.append(
                f"the report failed ({type(error).__name__}: {error}; traceback in {where}); the tables in "
                f"{out} are complete"
            )
    if failed:
        listed = "; ".join(f"{o.step_id}: {o.error}" for o in failed)
        problems.append(f"{len(failed)} of {len(outcomes)} steps failed ({listed}); run again to retry them")
    if problems:
        raise RunsFailedError("; ".join(problems))


def _record(config: StudyConfig, *, preset: str, out: Path) -> dict[str, Any]:
    resolved = {"out": str(out), "data_dir": str(resolve_data_dir(config.data_dir))}
    return {"preset": preset, "config": {**asdict(config), **resolved}}


def reproduce(
    config: StudyConfig,
    *,
    preset: str,
    jobs: int = 1,
    progress: bool = True,
    write_report: Callable[..., Path] | None = None,
) -> Path:
    """Train and probe every (rate, seed) of `config`, `jobs` runs at a time, reusing finished runs and
    refreshing the tables as each run finishes, then (with `config.report`) write the report with
    `write_report(out, data_dir=...)`; returns the output folder."""
    out = Path(config.out) if config.out else default_out(config, preset)
    options = run_options(config, progress=progress)
    units = units_of(config)
    runs = unique_runs(units)
    open_study(
        out=out,
        study_id=config.study_id(),
        runs=runs,
        options=options,
        record=_record(config, preset=preset, out=out),
    )
    log.info("study %s: %d runs -> %s (run store %s)", config.study_id(), len(runs), out, options.store)
    store = Path(options.store)
    outcomes = execute_steps(
        study_steps(runs),
        options,
        ExecutorOptions(jobs=jobs),
        on_outcome=when_runs_end(runs, lambda: gather_tables(out, units=units, store=store)),
    )
    finish(
        out,
        with_damaged(outcomes, gather_tables(out, units=units, store=store)),
        write_report=write_report if config.report else None,
        data_dir=config.data_dir,
    )
    return out


def with_damaged(outcomes: Sequence[Outcome], damaged: Sequence[str]) -> list[Outcome]:
    """`outcomes`, with the steps of the runs found damaged while gathering counted as failed."""
    note = "DamagedFile: a stored file no longer matches its digest; it is computed again on the next run"
    return [Outcome(o.step_id, "failed", note) if o.step_id.split("/")[0] in damaged else o for o in outcomes]


def single_step(config: StudyConfig, *, preset: str, step: str, progress: bool = True) -> Path:
    """`overparam train` / `overparam probe`: one step of the study's only run; returns the run's folder."""
    units = units_of(config)
    if len(units) != 1:
        raise ConfigError(f"`{step}` works on one run: give one --rates value and one --seeds value")
    out = Path(config.out) if config.out else default_out(config, preset)
    options = run_options(config, progress=progress)
    run = units[0].run
    open_study(
        out=out,
        study_id=config.study_id(),
        runs=[run],
        options=options,
        record=_record(config, preset=preset, out=out),
    )
    run_steps(run, options, steps=(step,))
    gather_tables(out, units=units, store=Path(options.store))
    return out / "runs" / run.run_id()
