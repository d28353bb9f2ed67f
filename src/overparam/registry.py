"""The one way in for an experiment: it registers an `Experiment`, which contributes its steps (added to a
run's own training and probes), its commands, its analysis tables and its report sections. The CLI, the
executors and the report find experiments here and name none of them.

The built-in experiments are entry points of the group "overparam.experiments" (pyproject.toml), loaded on
first use in every process, so a worker that only unpickles a step still knows every experiment; an
experiment defined elsewhere (a test, a user's package) calls `register`.
"""

import argparse
import importlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only for annotations: this module stays light to import
    import pandas as pd

    from overparam.config import RunConfig
    from overparam.html_kit import Page
    from overparam.results import Study
    from overparam.store.steps import Step

ENTRY_POINTS = "overparam.experiments"


@dataclass(frozen=True)
class Services:
    """What the shell lends a command: `write_report(out, data_dir=...)` writes OUT/report.html."""

    write_report: Callable[..., Path]


@dataclass(frozen=True)
class Command:
    """A subcommand of `overparam`: `add_arguments` declares its flags, `run` returns the exit status."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, Services], int]


@dataclass(frozen=True)
class ReportInputs:
    """What a report section is written from: the study, every analysis table by its CSV name, a colour per
    rate, and the report's settings."""

    study: "Study"
    tables: dict[str, "pd.DataFrame"]
    colours: dict[float, tuple[float, float, float, float]]
    data_dir: Path | None
    n_bootstrap: int
    seed: int


@dataclass(frozen=True)
class Section:
    """A report section: `write(page, inputs)` adds its blocks; sections appear in ascending `order`."""

    order: int
    write: Callable[["Page", ReportInputs], None]


@dataclass(frozen=True)
class Experiment:
    """An experiment's contributions; every field but the name is optional.

    steps: the steps a run adds for this experiment (empty when the run's settings do not ask for it).
    tables: its analysis tables of a finished study, by CSV name (OUT/analysis/<name>.csv); called as
        `tables(study, n_bootstrap=..., seed=...)`.
    summary: its lines of OUT/summary.md, from every analysis table.
    """

    name: str
    steps: Callable[["RunConfig"], list["Step"]] | None = None
    commands: tuple[Command, ...] = ()
    tables: Callable[..., dict[str, "pd.DataFrame"]] | None = None
    sections: tuple[Section, ...] = ()
    summary: Callable[[dict[str, "pd.DataFrame"]], list[str]] | None = None
    order: int = 50  # where its tables and summary lines go among the experiments'


def lazy(target: str) -> Callable[..., Any]:
    """The function `target` ("package.module:name"), imported on its first call, so that registering an
    experiment imports none of its work (`overparam --help` stays quick)."""
    module, _, name = target.partition(":")

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    call.__qualname__ = call.__name__ = target
    return call


_registered: dict[str, Experiment] = {}
_loaded = False


def register(experiment: Experiment) -> Experiment:
    """Make `experiment` known to the CLI, the executors and the report (replacing one of the same name)."""
    _registered[experiment.name] = experiment
    return experiment


def unregister(name: str) -> None:
    _registered.pop(name, None)


def _load_entry_points() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for entry in metadata.entry_points(group=ENTRY_POINTS):
        found = entry.load()
        if isinstance(found, Experiment) and found.name not in _registered:
            register(found)


def experiments() -> list[Experiment]:
    """Every experiment, built-in and registered, in their `order` (then by name)."""
    _load_entry_points()
    return sorted(_registered.values(), key=lambda experiment: (experiment.order, experiment.name))


def commands() -> list[Command]:
    return [command for experiment in experiments() for command in experiment.commands]


def sections() -> list[Section]:
    return sorted(
        (section for experiment in experiments() for section in experiment.sections),
        key=lambda section: section.order,
    )


def steps_of(run: "RunConfig") -> list["Step"]:
    """The steps the experiments add to `run`, in the experiments' order."""
    return [step for experiment in experiments() if experiment.steps for step in experiment.steps(run)]


@contextmanager
def registered(experiment: Experiment) -> Iterator[Experiment]:
    """`experiment` registered for the duration of a `with` block (tests)."""
    register(experiment)
    try:
        yield experiment
    finally:
        unregister(experiment.name)
