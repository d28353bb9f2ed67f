"""`overparam simplicity`: the parameter-function map's bias on the 7-bit cube, SGD against the prior, and
label noise stored as a lookup table or not. Steps go through the run store (cached, resumable); the tables
(CSV), figures and report.html go into --out. Light to import: the work is imported inside `run`."""

import argparse
import logging

from overparam.registry import Services

PRESET_NAMES = ("smoke", "quick", "paper")  # simplicity.config.PRESETS, without importing torch here

log = logging.getLogger(__name__)

HELP = (
    "simplicity bias on Boolean functions of 7 bits: the prior over functions, SGD against it, and label "
    "noise on the cube"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The experiment's flags; every setting left out is the preset's."""
    parser.add_argument(
        "--preset", default="quick", choices=PRESET_NAMES, help="smoke: seconds; quick: CPU; paper: GPU"
    )
    parser.add_argument("--out", default="simplicity", help="folder for the tables, figures and report.html")
    parser.add_argument("--store", default=None, help="run store (default $OVERPARAM_STORE, else runs/store)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--seed", type=int, default=None, help="seeds the prior's draws and every training")
    parser.add_argument("--draws", type=int, default=None, help="prior samples of the network's parameters")
    parser.add_argument("--sgd-trainings", type=int, default=None, help="trainings per target (SGD vs prior)")
    parser.add_argument(
        "--noise-trainings", type=int, default=None, help="trainings per target and number of flipped labels"
    )
    parser.add_argument(
        "--gp-functions",
        type=int,
        default=None,
        help="per target: SGD's most frequent functions given P_GP(f|S)",
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default PyTorch's)")
    parser.add_argument("--progress", action="store_true", help="progress bars")


def run(arguments: argparse.Namespace, services: Services) -> int:
    """Compute the steps the settings need (cached ones are read), then write OUT/*.csv, OUT/figures,
    OUT/report.html and OUT/config.json. 0 on success, 1 when a step failed (its error is logged)."""
    from pathlib import Path

    import torch

    from overparam.experiments.simplicity.config import resolve
    from overparam.experiments.simplicity.tables import experiment_tables
    from overparam.runtime import environment, select_device
    from overparam.store.executors import execute_steps
    from overparam.store.files import resolve_store, write_csv, write_json
    from overparam.store.steps import RunOptions

    config = resolve(
        preset=arguments.preset,
        overrides={
            "seed": arguments.seed,
            "draws": arguments.draws,
            "sgd_trainings": arguments.sgd_trainings,
            "noise_trainings": arguments.noise_trainings,
            "gp_functions": arguments.gp_functions,
        },
    )
    if arguments.threads is not None:
        torch.set_num_threads(arguments.threads)
    store = resolve_store(arguments.store)
    options = RunOptions(store=str(store), device=arguments.device, progress=arguments.progress)
    steps = [config.gp_check(), *config.gp().values(), *config.noise().values()]
    outcomes = execute_steps(steps, options)
    failed = [outcome for outcome in outcomes if outcome.status not in ("done", "cached")]
    for outcome in failed:
        log.error("%s %s: %s", outcome.status, outcome.step_id, outcome.error)
    if failed:
        return 1
    out = Path(arguments.out)
    overview, tables = experiment_tables(config, store=store)
    for name, table in tables.items():
        write_csv(table, out / f"{name}.csv")
    from overparam.experiments.simplicity.report import write_report

    write_report(out, config=config.as_dict(), overview=overview, tables=tables)
    write_json(
        {
            "config": config.as_dict(),
            "prior": overview,
            "steps": {outcome.step_id: outcome.status for outcome in outcomes},
            "environment": environment(select_device(arguments.device)),
        },
        out / "config.json",
    )
    return 0
