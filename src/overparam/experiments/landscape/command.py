"""`overparam landscape`: intrinsic dimension of the classic MNIST networks and of memorisation, paths
between memorising minima, and the width of their minima per group of images. Computes the experiment's
steps through the run store's executors (cached, resumable), then writes the tables (CSV), figures (PNG and
SVG), report.html and config.json into --out.

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
    from overparam.experiments.landscape.settings import LandscapeConfig

log = logging.getLogger(__name__)
PARTS = ("intrinsic", "memorisation", "paths", "tunnel")

HELP = (
    "the loss landscape of memorisation: intrinsic dimension of each group's fit, paths between "
    "memorising minima, tunnel width"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's flags."""
    add_preset(parser, quick="the CPU preset, under 30 minutes on 2 cores")
    add_placement(parser, name="landscape")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (at least two for paths)")
    parser.add_argument(
        "--rates", type=parse_rate, nargs="+", default=None, help="rates of the memorisation part"
    )
    parser.add_argument(
        "--path-rates", type=parse_rate, nargs="+", default=None, help="rates of paths and tunnels"
    )
    parser.add_argument("--dims", type=int, nargs="+", default=None, help="d grid of the memorisation part")
    parser.add_argument(
        "--anchor-dims", type=int, nargs="+", default=None, help="d grid of the classic networks"
    )
    parser.add_argument("--points", type=int, default=None, help="points along each path (ends included)")
    parser.add_argument(
        "--parts", nargs="+", choices=PARTS, default=None, help="what to compute (default all)"
    )


def _config(arguments: argparse.Namespace, preset: str) -> "LandscapeConfig":
    from dataclasses import replace

    from overparam.experiments.landscape.settings import PRESETS, landscape_config

    curve = None
    if arguments.points is not None:
        curve = replace(PRESETS[preset]["curve"], points=arguments.points)
    return landscape_config(
        preset=preset,
        seeds=tuple(arguments.seeds) if arguments.seeds else None,
        rates=tuple(arguments.rates) if arguments.rates else None,
        path_rates=tuple(arguments.path_rates) if arguments.path_rates else None,
        memorisation_dims=tuple(arguments.dims) if arguments.dims else None,
        anchor_dims=tuple(arguments.anchor_dims) if arguments.anchor_dims else None,
        parts=tuple(arguments.parts) if arguments.parts else None,
        curve=curve,
    )


def run(arguments: argparse.Namespace, services: Services) -> int:
    """Compute every step (through the executors), then write tables, figures, report.html and config.json
    into --out; 0 when every step finished, 1 when some failed (what finished is still reported), 2 for bad
    settings."""
    import hashlib
    from dataclasses import asdict
    from datetime import UTC, datetime

    import torch

    from overparam.experiments.landscape.plan import all_steps, gather
    from overparam.experiments.landscape.report import write_outputs
    from overparam.experiments.landscape.summary import analyse
    from overparam.runtime import environment, select_device
    from overparam.store.executors import ExecutorOptions, execute_steps
    from overparam.store.files import resolve_store, write_json
    from overparam.store.steps import RunOptions

    try:
        preset = arguments.preset or ("paper" if torch.cuda.is_available() else "quick")
        config = _config(arguments, preset)
        device = select_device(arguments.device)
    except ConfigError as error:
        print(f"overparam landscape: {error}", file=sys.stderr)
        return 2
    settings = json.dumps(asdict(config), sort_keys=True, default=str)
    out = Path(
        arguments.out or f"runs/landscape-{preset}-{hashlib.sha256(settings.encode()).hexdigest()[:8]}"
    )
    store = resolve_store(arguments.store)
    options = RunOptions(
        store=str(store),
        data_dir=arguments.data_dir,
        download=arguments.download,
        device=arguments.device,
        progress=sys.stderr.isatty(),
    )
    started = datetime.now(UTC).isoformat(timespec="seconds")
    log.info("landscape: preset %s, %s; store %s, out %s", preset, device, store, out)
    outcomes = execute_steps(all_steps(config), options, ExecutorOptions(jobs=arguments.jobs))
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
            "steps": {
                status: sum(o.status == status for o in outcomes) for status in ("done", "cached", "failed")
            },
            "environment": environment(device),
        },
        out / "config.json",
    )
    write_outputs(out, analyse(gather(config, store)), config=config)
    print(f"landscape: {out / 'report.html'}")
    return 1 if failed else 0
