"""Sweeps: a grid of studies declared in a small TOML file, executed locally (a process pool), on a Ray
cluster or as a SLURM job array, and gathered into the same tables as `reproduce`.

    preset = "quick"                 # starting point of every study (smoke | quick | paper)
    out = "runs/width-sweep"         # optional; default runs/sweep-<file name>-<hash of the grid>

    [settings]                       # applied to every study
    seeds = [0, 1, 2]
    rates = ["0", "1/100", "1/10"]

    [grid]                           # one study per combination of these
    width = [8, 16, 32]
    dataset = ["mnist", "fashion-mnist"]

Every run is an idempotent unit of the shared run store: finished runs are skipped, failed ones retried,
and a run held by another process is waited for.
"""

import hashlib
import itertools
import logging
import tomllib
import typing
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import pandas as pd

from overparam.config import PRESETS, ConfigError, RunConfig, StudyConfig, resolve
from overparam.execution import Outcome, RunOptions, execute, execute_local, status
from overparam.study import finish, gather_tables, open_study

log = logging.getLogger(__name__)
EXECUTORS = ("local", "ray", "slurm")


@dataclass(frozen=True)
class Sweep:
    """The studies of a sweep file, each with the grid values that made it."""

    name: str
    preset: str
    out: Path
    studies: list[tuple[dict[str, Any], StudyConfig]]
    text: str  # the file, verbatim, for config.json

    def runs(self) -> list[RunConfig]:
        """Every run of every study, each once."""
        unique = {run.run_id(): run for _, config in self.studies for run in config.runs()}
        return list(unique.values())

    def labels(self) -> dict[str, dict[str, Any]]:
        """Grid values per run id, as extra table columns (tuples shown as text)."""
        labels: dict[str, dict[str, Any]] = {}
        for point, config in self.studies:
            shown = {k: " ".join(map(str, v)) if isinstance(v, tuple) else v for k, v in point.items()}
            for run in config.runs():
                labels.setdefault(run.run_id(), shown)
        return labels

    def study_id(self) -> str:
        return _sweep_id(self.studies)


def _sweep_id(studies: list[tuple[dict[str, Any], StudyConfig]]) -> str:
    """8 hex digits over the studies' ids: the same grid gets the same default folder."""
    joined = "|".join(config.study_id() for _, config in studies)
    return hashlib.sha256(joined.encode()).hexdigest()[:8]


def _setting_value(name: str, value: Any) -> Any:
    """A TOML value as StudyConfig wants it: lists become tuples, list strings are parsed as on the CLI."""
    setting = next((f for f in fields(StudyConfig) if f.name == name), None)
    if setting is None:
        valid = ", ".join(f.name for f in fields(StudyConfig))
        raise ConfigError(f"unknown setting {name!r} in the sweep file; valid settings: {valid}")
    kind = typing.get_type_hints(StudyConfig)[name]
    if typing.get_origin(kind) is not tuple:
        return value
    if not isinstance(value, list):
        raise ConfigError(f"setting {name!r} takes a list, e.g. {name} = [0, 1]")
    parse = setting.metadata.get("parse")
    values = []
    for item in value:
        parsed = parse(item) if parse and isinstance(item, str) else item
        values.extend(parsed if isinstance(parsed, tuple) else (parsed,))
    return tuple(values)


def load_sweep(path: Path, *, overrides: dict[str, Any] | None = None) -> Sweep:
    """Read and validate a sweep file; `overrides` (non-None values) apply to every study."""
    try:
        text = path.read_text()
        spec = tomllib.loads(text)
    except OSError as error:
        raise ConfigError(f"cannot read sweep file {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"sweep file {path} is not valid TOML: {error}") from None
    unknown = set(spec) - {"preset", "out", "settings", "grid"}
    if unknown:
        raise ConfigError(f"unknown keys {sorted(unknown)} in {path}; use preset, out, [settings] and [grid]")
    preset = spec.get("preset", "quick")
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r} in {path}; choose one of {', '.join(PRESETS)}")
    settings = {name: _setting_value(name, value) for name, value in spec.get("settings", {}).items()}
    grid = spec.get("grid", {})
    for name, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid setting {name!r} in {path} needs a non-empty list of values")
    names = list(grid)
    studies = []
    for combination in itertools.product(*(grid[name] for name in names)):
        point = {name: _setting_value(name, value) for name, value in zip(names, combination, strict=True)}
        chosen = {k: v for k, v in (overrides or {}).items() if v is not None}
        studies.append((point, resolve(preset=preset, overrides={**settings, **point, **chosen})))
    out = Path(spec["out"]) if "out" in spec else Path("runs") / f"sweep-{path.stem}-{_sweep_id(studies)}"
    return Sweep(name=path.stem, preset=preset, out=out, studies=studies, text=text)


@dataclass(frozen=True)
class ExecutorOptions:
    """How to spread runs: `jobs` local processes, or Ray / SLURM resources per run."""

    executor: str = "local"
    jobs: int = 1
    cpus_per_run: int = 1
    gpus_per_run: float = 0.0  # fractions let small models share a GPU (Ray)
    ray_address: str | None = None
    slurm_partition: str | None = None
    slurm_minutes: int = 240
    slurm_cluster: str | None = None  # None: detect SLURM; "local" runs the array as local processes


def _run_ray(runs: Sequence[RunConfig], options: RunOptions, executor: ExecutorOptions) -> list[Outcome]:
    try:
        import ray
    except ImportError:
        raise ConfigError("--executor ray needs Ray: pip install 'overparam[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=executor.ray_address, include_dashboard=False, log_to_driver=False)
    task = ray.remote(num_cpus=executor.cpus_per_run, num_gpus=executor.gpus_per_run)(execute)
    pending = [(run, task.remote(run, options)) for run in runs]
    outcomes = []
    for run, reference in pending:
        try:
            outcomes.append(ray.get(reference))
        except ray.exceptions.RayError as error:  # the worker itself died (node lost, out of memory)
            outcomes.append(Outcome(run.run_id(), "failed", f"{type(error).__name__}: {error}"))
    return outcomes


def _run_slurm(
    runs: Sequence[RunConfig], options: RunOptions, executor: ExecutorOptions, folder: Path
) -> list[Outcome]:
    try:
        import submitit
    except ImportError:
        raise ConfigError("--executor slurm needs submitit: pip install 'overparam[slurm]'") from None
    array = submitit.AutoExecutor(folder=folder, cluster=executor.slurm_cluster)
    parameters: dict[str, Any] = {
        "timeout_min": executor.slurm_minutes,
        "cpus_per_task": executor.cpus_per_run,
        "gpus_per_node": int(executor.gpus_per_run),
    }
    if executor.slurm_partition:
        parameters["slurm_partition"] = executor.slurm_partition
    array.update_parameters(**parameters)
    jobs = array.map_array(execute, list(runs), [options] * len(runs))
    log.info(
        "submitted %d jobs (%s), logs in %s", len(jobs), jobs[0].job_id.split("_")[0] if jobs else "-", folder
    )
    outcomes = []
    for run, job in zip(runs, jobs, strict=True):
        try:
            outcomes.append(job.result())
        except Exception as error:  # the job itself died: time limit, node failure, out of memory
            outcomes.append(Outcome(run.run_id(), "failed", f"{type(error).__name__}: {error}"))
    return outcomes


def run_sweep(
    sweep: Sweep, *, options: RunOptions, executor: ExecutorOptions, report: bool = True
) -> list[Outcome]:
    """Execute every run of `sweep` not yet finished, gather the tables and write the report; raises
    RunsFailedError (after gathering) when any run failed."""
    if executor.executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {executor.executor!r}; choose one of {', '.join(EXECUTORS)}")
    runs = sweep.runs()
    record = {
        "sweep": sweep.name,
        "preset": sweep.preset,
        "sweep_file": sweep.text,
        "studies": [{"grid": point, "study_id": config.study_id()} for point, config in sweep.studies],
        "executor": executor.__dict__,
    }
    open_study(out=sweep.out, study_id=sweep.study_id(), runs=runs, options=options, record=record)
    log.info("sweep %s: %d runs, executor %s -> %s", sweep.name, len(runs), executor.executor, sweep.out)
    # On a cluster a run gets the threads it reserved: cpus_per_run = cores / jobs gives the local tables.
    reserved = replace(options, threads=executor.cpus_per_run)
    if executor.executor == "local":
        outcomes = execute_local(runs, options, jobs=executor.jobs)
    elif executor.executor == "ray":
        outcomes = _run_ray(runs, reserved, executor)
    else:
        outcomes = _run_slurm(runs, reserved, executor, folder=sweep.out / "slurm")
    gather_tables(sweep.out, runs=runs, store=Path(options.store), labels=sweep.labels())
    finish(sweep.out, outcomes, report=report, data_dir=options.data_dir)
    return outcomes


def sweep_status(sweep: Sweep, *, store: Path) -> pd.DataFrame:
    """One row per run: run_id, status (done | running | failed | pending), error, and the grid values."""
    labels = sweep.labels()
    rows = []
    for run in sweep.runs():
        state, error = status(run, store)
        rows.append({"run_id": run.run_id(), **labels[run.run_id()], "status": state, "error": error or ""})
    return pd.DataFrame(rows)
