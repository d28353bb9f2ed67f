"""Finding the mislabelled images: a run with --label-scores adds its `LabelScores` step; the study's
analysis gets the detection tables and the report their section; `overparam label-errors` is its command."""

from typing import Any

from overparam.experiments.label_errors.command import HELP, add_arguments, run
from overparam.registry import Command, Experiment, ReportInputs, Section


def _steps(run: Any) -> list[Any]:
    if not run.label_scores:
        return []
    from overparam.experiments.label_errors.scores import LabelScores

    return [LabelScores(run)]


def _tables(study: Any, *, n_bootstrap: int, seed: int) -> dict[str, Any]:
    from overparam.experiments.label_errors.summary import label_error_tables

    return label_error_tables(study.out, n_bootstrap=n_bootstrap, seed=seed)


def _section(page: Any, inputs: ReportInputs) -> None:
    from overparam.experiments.label_errors.section import write_section

    write_section(page, inputs.tables)


EXPERIMENT = Experiment(
    name="label_errors",
    steps=_steps,
    commands=(
        Command(
            name="label-errors",
            help=HELP,
            add_arguments=add_arguments,
            run=run,
        ),
    ),
    tables=_tables,
    sections=(Section(order=20, write=_section),),
    order=20,
)
