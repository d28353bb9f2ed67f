"""`overparam landscape`: an experiment with its own command, settings and report (see command.py)."""

from overparam.experiments.landscape.command import HELP, add_arguments, run
from overparam.registry import Command, Experiment

EXPERIMENT = Experiment(
    name="landscape",
    commands=(
        Command(
            name="landscape",
            help=HELP,
            add_arguments=add_arguments,
            run=run,
        ),
    ),
    order=40,
)
