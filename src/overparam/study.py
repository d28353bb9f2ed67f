"""A study: the runs of one StudyConfig, or of several for a sweep, executed in the shared run store and
gathered into the tidy tables of the study's output folder (README, "Outputs")."""

import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from overparam.config import ConfigError, RunConfig, StudyConfig
from overparam.data import resolve_data_dir
from overparam.execution import Outcome, RunOptions, execute_local, load_splits, prepare, run_steps
from overparam.report import write_report
from overparam.runtime import environment, select_device
from overparam.storage import read_json, resolve_store, run_paths, study_table, write_csv, write_json

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


def gather_tables(
    out: Path, *, runs: Sequence[RunConfig], store: Path, labels: Mapping[str, dict[str, Any]] | None = None
) -> None:
    """Write OUT/runs.csv, metrics.csv, mislabels.csv, curves.csv and flips.csv from the finished runs.
    `labels` adds columns per run id (a sweep's grid values) to every table."""
    frames: dict[str, list[pd.DataFrame]] = {
        name: [] for name in ("runs", "metrics", "mislabels", "curves", "flips")
    }
    for run in runs:
        paths = run_paths(store, run_id=run.run_id(), probe_id=run.probe_id())
        if not paths.training.exists():
            continue
        extra = (labels or {}).get(run.run_id(), {})
        found = {
            "runs": pd.DataFrame([read_json(paths.training)["result"]]),
            "metrics": pd.read_csv(paths.metrics),
        }
        found["mislabels"] = pd.read_csv(paths.mislabels)
        if paths.probe_record.exists():
            found["curves"], found["flips"] = pd.read_csv(paths.curves), pd.read_csv(paths.flips)
        for name, frame in found.items():
            frames[name].append(frame.assign(**extra))
    for name, parts in frames.items():
        if parts:
            write_csv(pd.concat(parts, ignore_index=True), study_table(out, name))


def finish(out: Path, outcomes: Sequence[Outcome], *, report: bool, data_dir: str | None) -> None:
    """Write the report of what finished, then raise RunsFailedError naming every failed run."""
    failed = [o for o in outcomes if o.status == "failed"]
    if report and len(failed) < len(outcomes):
        log.info("report  %s", write_report(out, data_dir=resolve_data_dir(data_dir)))
    if failed:
        listed = "; ".join(f"{o.run_id}: {o.error}" for o in failed)
        raise RunsFailedError(
            f"{len(failed)} of {len(outcomes)} runs failed ({listed}); run again to retry them"
        )


def _record(config: StudyConfig, *, preset: str, out: Path) -> dict[str, Any]:
    resolved = {"out": str(out), "data_dir": str(resolve_data_dir(config.data_dir))}
    return {"preset": preset, "config": {**asdict(config), **resolved}}


def reproduce(config: StudyConfig, *, preset: str, jobs: int = 1, progress: bool = True) -> Path:
    """Train and probe every (rate, seed) of `config`, `jobs` runs at a time, reusing finished runs and
    refreshing the tables as each run finishes; returns the output folder."""
    out = Path(config.out) if config.out else default_out(config, preset)
    options = run_options(config, progress=progress)
    runs = config.runs()
    open_study(
        out=out,
        study_id=config.study_id(),
        runs=runs,
        options=options,
        record=_record(config, preset=preset, out=out),
    )
    log.info("study %s: %d runs -> %s (run store %s)", config.study_id(), len(runs), out, options.store)
    store = Path(options.store)
    outcomes = execute_local(
        runs, options, jobs=jobs, on_outcome=lambda _: gather_tables(out, runs=runs, store=store)
    )
    finish(out, outcomes, report=config.report, data_dir=config.data_dir)
    return out


def single_step(config: StudyConfig, *, preset: str, step: str, progress: bool = True) -> Path:
    """`overparam train` / `overparam probe`: one step of the study's only run; returns the run's folder."""
    runs = config.runs()
    if len(runs) != 1:
        raise ConfigError(f"`{step}` works on one run: give one --rates value and one --seeds value")
    out = Path(config.out) if config.out else default_out(config, preset)
    options = run_options(config, progress=progress)
    open_study(
        out=out,
        study_id=config.study_id(),
        runs=runs,
        options=options,
        record=_record(config, preset=preset, out=out),
    )
    run_steps(runs[0], options, steps=(step,))
    gather_tables(out, runs=runs, store=Path(options.store))
    return out / "runs" / runs[0].run_id()
