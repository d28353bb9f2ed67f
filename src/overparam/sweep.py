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

Every step (a training, a probe) is an idempotent unit of the shared run store: finished steps are skipped,
failed ones retried, and a step held by another process is waited for.
"""

import hashlib
import itertools
import logging
import tomllib
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pandas as pd

from overparam.config import (
    PRESETS,
    ConfigError,
    RunConfig,
    StudyConfig,
    canonical_setting,
    resolve,
)
from overparam.execution import status
from overparam.store.executors import ExecutorOptions, check_resources, execute_steps
from overparam.store.files import read_json
from overparam.store.steps import Outcome, RunOptions
from overparam.study import (
    DEFAULT_VARIANT,
    Unit,
    finish,
    gather_tables,
    open_study,
    study_steps,
    unique_runs,
    units_of,
    when_runs_end,
    with_damaged,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sweep:
    """The studies of a sweep file, each with the grid values that made it."""

    name: str
    preset: str
    out: Path
    studies: list[tuple[dict[str, Any], StudyConfig]]
    text: str  # the file, verbatim, for config.json

    def units(self) -> list[Unit]:
        """Every run of every study, labelled with its study's grid point: a `variant` column (the point as
        text, "all" without a grid) and a column per grid setting (tuples shown as text)."""
        units = []
        for point, config in self.studies:
            shown = {k: " ".join(map(str, v)) if isinstance(v, tuple) else v for k, v in point.items()}
            variant = " ".join(f"{k}={v}" for k, v in shown.items()) or DEFAULT_VARIANT
            units += units_of(config, {"variant": variant, **shown})
        return units

    def runs(self) -> list[RunConfig]:
        """Every (trained model, probe) of every study, each once."""
        return unique_runs(self.units())

    def study_id(self) -> str:
        return _sweep_id(self.studies)


def _sweep_id(studies: list[tuple[dict[str, Any], StudyConfig]]) -> str:
    """8 hex digits over the studies' ids: the same grid gets the same default folder."""
    joined = "|".join(config.study_id() for _, config in studies)
    return hashlib.sha256(joined.encode()).hexdigest()[:8]


def _setting_value(name: str, value: Any) -> Any:
    """A TOML value as StudyConfig wants it: lists become tuples, list strings are parsed as on the CLI, and
    every value takes its declared type (rate 0 -> 0.0) or is a ConfigError (width "16", seeds [0.5])."""
    setting = next((f for f in fields(StudyConfig) if f.name == name), None)
    if setting is None:
        valid = ", ".join(f.name for f in fields(StudyConfig))
        raise ConfigError(f"unknown setting {name!r} in the sweep file; valid settings: {valid}")
    kind = typing.get_type_hints(StudyConfig)[name]
    if typing.get_origin(kind) is not tuple:
        return canonical_setting(name, value)
    if not isinstance(value, list):
        raise ConfigError(f"setting {name!r} takes a list, e.g. {name} = [0, 1]")
    parse = setting.metadata.get("parse")
    values = []
    for item in value:
        parsed = parse(item) if parse and isinstance(item, str) else item
        values.extend(parsed if isinstance(parsed, tuple) else (parsed,))
    return canonical_setting(name, tuple(values))


def load_sweep(path: Path, *, overrides: dict[str, Any] | None = None) -> Sweep:
    """Read and validate a sweep file; `overrides` (non-None values) apply to every study."""
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"cannot read sweep file {path}: {error.strerror}") from None
    return parse_sweep(text, name=path.stem, origin=str(path), overrides=overrides)


def parse_sweep(text: str, *, name: str, origin: str, overrides: dict[str, Any] | None = None) -> Sweep:
    """A sweep from the text of its file; `origin` names it in errors."""
    try:
        spec = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"sweep file {origin} is not valid TOML: {error}") from None
    unknown = set(spec) - {"preset", "out", "settings", "grid"}
    if unknown:
        raise ConfigError(
            f"unknown keys {sorted(unknown)} in {origin}; use preset, out, [settings] and [grid]"
        )
    preset = spec.get("preset", "quick")
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r} in {origin}; choose one of {', '.join(PRESETS)}")
    settings = {key: _setting_value(key, value) for key, value in spec.get("settings", {}).items()}
    grid = spec.get("grid", {})
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid setting {key!r} in {origin} needs a non-empty list of values")
    keys = list(grid)
    studies = []
    for combination in itertools.product(*(grid[key] for key in keys)):
        point = {key: _setting_value(key, value) for key, value in zip(keys, combination, strict=True)}
        chosen = {k: v for k, v in (overrides or {}).items() if v is not None}
        studies.append((point, resolve(preset=preset, overrides={**settings, **point, **chosen})))
    out = Path(spec["out"]) if "out" in spec else Path("runs") / f"sweep-{name}-{_sweep_id(studies)}"
    return Sweep(name=name, preset=preset, out=out, studies=studies, text=text)


def output_units(out: Path) -> tuple[list[Unit], Path]:
    """The units of the study or sweep whose output folder is `out` (from its config.json), and the run
    store it used: what `overparam status OUT` reports on."""
    record_path = out / "config.json"
    if not record_path.exists():
        raise ConfigError(f"{out} holds no config.json: give a sweep file or the output folder of a study")
    record = read_json(record_path)
    if "sweep_file" in record:
        units = parse_sweep(record["sweep_file"], name=record["sweep"], origin=str(record_path)).units()
    else:
        units = units_of(resolve(preset=record["preset"], overrides=record["config"]))
    return units, Path(record["store"])


def run_sweep(
    sweep: Sweep,
    *,
    options: RunOptions,
    executor: ExecutorOptions,
    write_report: Callable[..., Path] | None = None,
) -> list[Outcome]:
    """Execute every run of `sweep` not yet finished, refreshing the tables as each finishes, and write the
    report with `write_report(out, data_dir=...)` (none: no report); raises RunsFailedError (after
    gathering) when any run failed."""
    check_resources(executor)
    units = sweep.units()
    runs = unique_runs(units)
    record = {
        "sweep": sweep.name,
        "preset": sweep.preset,
        "sweep_file": sweep.text,
        "studies": [{"grid": point, "study_id": config.study_id()} for point, config in sweep.studies],
        "executor": executor.__dict__,
    }
    open_study(out=sweep.out, study_id=sweep.study_id(), runs=runs, options=options, record=record)
    log.info("sweep %s: %d runs, executor %s -> %s", sweep.name, len(runs), executor.executor, sweep.out)
    store = Path(options.store)

    refresh = when_runs_end(runs, lambda: gather_tables(sweep.out, units=units, store=store))
    outcomes = execute_steps(
        study_steps(runs), options, executor, slurm_folder=sweep.out / "slurm", on_outcome=refresh
    )
    damaged = gather_tables(sweep.out, units=units, store=store)
    finish(sweep.out, with_damaged(outcomes, damaged), write_report=write_report, data_dir=options.data_dir)
    return outcomes


def sweep_status(sweep: Sweep, *, store: Path) -> pd.DataFrame:
    """One row per run of each study variant: run_id, the variant's columns, status (done | running | failed
    | pending) and error."""
    return units_status(sweep.units(), store=store)


def units_status(units: Sequence[Unit], *, store: Path) -> pd.DataFrame:
    rows = []
    for unit in units:
        state, error = status(unit.run, store)
        rows.append({"run_id": unit.run.run_id(), **unit.labels, "status": state, "error": error or ""})
    return pd.DataFrame(rows)
