"""`overparam memorisation`: its command, its analysis tables (from the tables the command wrote into OUT;
none for any other study), its report section and summary lines."""

from typing import Any

from overparam.experiments.memorisation.command import HELP, add_arguments, run
from overparam.registry import Command, Experiment, ReportInputs, Section


def _tables(study: Any, *, n_bootstrap: int, seed: int) -> dict[str, Any]:
    from overparam.experiments.memorisation.analysis import memorisation_tables

    return memorisation_tables(study.out)


def _section(page: Any, inputs: ReportInputs) -> None:
    from overparam.experiments.memorisation.report import write_section

    write_section(page, inputs.tables)


def _summary(tables: dict[str, Any]) -> list[str]:
    from overparam.experiments.memorisation.report import summary

    return summary(tables)


EXPERIMENT = Experiment(
    name="memorisation",
    commands=(Command(name="memorisation", help=HELP, add_arguments=add_arguments, run=run),),
    tables=_tables,
    sections=(Section(order=22, write=_section),),
    summary=_summary,
    order=22,
)
