"""`overparam width`: how the network's size changes memorisation. Trains a grid of widths at each
label-noise rate and seed (the core's training and blur probe, through the run store's executors: cached,
resumable), adds each run's test loss, reproduces Belkin et al.'s random-Fourier-features double descent,
then writes the tables (CSV), figures, report.html and config.json into --out.

Importing this module stays light: torch, pandas and matplotlib are imported inside `run`.
"""

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from overparam.arguments import add_placement, add_preset
from overparam.config import ConfigError, parse_rate
from overparam.registry import Services

if TYPE_CHECKING:  # imported lazily at run time: this module stays light
    from overparam.experiments.width.settings import WidthConfig

log = logging.getLogger(__name__)
PARTS = ("sweep", "belkin")
HELP = "over-parameterisation: test error, memorisation and the interpolation threshold against width"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's flags."""
    add_preset(parser, extra={"quick-resnet": "ResNet-18 widths 1-32 on the CPU"})
    add_placement(parser, name="width")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (replicates)")
    parser.add_argument("--rates", type=parse_rate, nargs="+", default=None, help="label-noise rates")
    parser.add_argument("--epochs", type=int, default=None, help="epochs of every training (whole schedule)")
    parser.add_argument(
        "--parts", nargs="+", choices=PARTS, default=None, help="what to compute (default all)"
    )


def _config(arguments: argparse.Namespace, preset: str) -> "WidthConfig":
    from overparam.experiments.width.settings import width_config

    return width_config(
        preset=preset,
        seeds=tuple(arguments.seeds) if arguments.seeds else None,
        rates=tuple(arguments.rates) if arguments.rates else None,
        max_epochs=arguments.epochs,
        parts=tuple(arguments.parts) if arguments.parts else None,
    )


def run(arguments: argparse.Namespace, services: Services | None = None) -> int:
    """Compute every step (through the executors), then write the tables, figures, report.html and
    config.json into --out; 0 when every step finished, 1 when some failed (what finished is still
    reported), 2 for bad settings."""
    import hashlib
    from dataclasses import asdict
    from datetime import UTC, datetime

    import torch

    from overparam.experiments.width.analysis import analyse
    from overparam.experiments.width.belkin import BelkinStep
    from overparam.experiments.width.report import write_outputs
    from overparam.experiments.width.steps import gather_runs, sweep_steps
    from overparam.runtime import environment, select_device
    from overparam.store.executors import ExecutorOptions, execute_steps
    from overparam.store.files import resolve_store, write_json
    from overparam.store.steps import RunOptions

    try:
        preset = arguments.preset or ("paper" if torch.cuda.is_available() else "quick")
        config = _config(arguments, preset)
        device = select_device(arguments.device)
    except ConfigError as error:
        print(f"overparam width: {error}", file=sys.stderr)
        return 2
    settings = json.dumps(asdict(config), sort_keys=True, default=str)
    out = Path(arguments.out or f"runs/width-{preset}-{hashlib.sha256(settings.encode()).hexdigest()[:8]}")
    store = resolve_store(arguments.store)
    options = RunOptions(
        store=str(store),
        data_dir=arguments.data_dir,
        download=arguments.download,
        device=arguments.device,
        progress=sys.stderr.isatty(),
    )
    runs = config.runs()
    steps = [step for run_config in runs for step in sweep_steps(run_config, probe=config.probe)]
    belkin = BelkinStep(config.belkin)
    if "belkin" in config.parts:
        steps.append(belkin)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    log.info("width: preset %s, %s, %d runs; store %s, out %s", preset, device, len(runs), store, out)
    outcomes = execute_steps(steps, options, ExecutorOptions(jobs=arguments.jobs))
    failed = [outcome for outcome in outcomes if outcome.status == "failed"]
    for outcome in failed:
        log.error("failed %s: %s", outcome.step_id, outcome.error)
    out.mkdir(parents=True, exist_ok=True)
    write_json(
        {
            "preset": preset,
            "settings": json.loads(settings),
            "command": sys.argv,
            "store": str(store),
            "started": started,
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            "steps": {
                status: sum(o.status == status for o in outcomes) for status in ("done", "cached", "failed")
            },
            "environment": environment(device),
        },
        out / "config.json",
    )
    tables = {}
    table = gather_runs(runs, store, probe=config.probe)
    if len(table):
        tables["width_runs"] = table
        tables |= analyse(table, target=config.target_acc)
    if "belkin" in config.parts and belkin.record(store).exists():
        tables["belkin"] = belkin.table(store)
    write_outputs(out, tables, config=config)
    print(f"width: {out / 'report.html'}")
    return 1 if failed else 0
