"""`overparam simplicity`: an experiment with its own command, settings and report (see command.py)."""

from overparam.experiments.simplicity.command import HELP, add_arguments, run
from overparam.registry import Command, Experiment

EXPERIMENT = Experiment(
    name="simplicity",
    commands=(
        Command(
            name="simplicity",
            help=HELP,
            add_arguments=add_arguments,
            run=run,
        ),
    ),
    order=40,
)
