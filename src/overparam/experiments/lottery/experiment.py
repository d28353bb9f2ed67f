"""How sparse the network can be and still store the mislabels: a run with --oneshot-pruning or
--lottery-rounds adds those steps; the study's analysis gets the pruning and ticket tables and the report
their two sections."""

from typing import Any

from overparam.registry import Experiment, ReportInputs, Section


def _steps(run: Any) -> list[Any]:
    steps = []
    if run.oneshot_pruning:
        from overparam.experiments.lottery.oneshot import OneShotPruning

        steps.append(OneShotPruning(run))
    if run.lottery_rounds:
        from overparam.experiments.lottery.tickets import lottery_steps

        steps += lottery_steps(run)
    return steps


def _tables(study: Any, *, n_bootstrap: int, seed: int) -> dict[str, Any]:
    from overparam.experiments.lottery.report import lottery_tables

    return lottery_tables(study)


def _pruning(page: Any, inputs: ReportInputs) -> None:
    from overparam.experiments.lottery.report import pruning_section

    pruning_section(page, inputs.tables, inputs.colours)


def _tickets(page: Any, inputs: ReportInputs) -> None:
    from overparam.experiments.lottery.report import lottery_section

    lottery_section(page, inputs.tables, inputs.colours)


EXPERIMENT = Experiment(
    name="lottery",
    steps=_steps,
    tables=_tables,
    sections=(Section(order=30, write=_pruning), Section(order=31, write=_tickets)),
    order=30,
)
