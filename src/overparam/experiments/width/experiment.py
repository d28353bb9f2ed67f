"""`overparam width`: an experiment with its own command, settings and report (see command.py)."""

from overparam.experiments.width.command import HELP, add_arguments, run
from overparam.registry import Command, Experiment

EXPERIMENT = Experiment(
    name="width",
    commands=(Command(name="width", help=HELP, add_arguments=add_arguments, run=run),),
    order=45,
)
