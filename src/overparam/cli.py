"""The `overparam` command. Its setting flags are generated from StudyConfig's fields."""

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from overparam import __version__, bench_options, registry
from overparam.arguments import JOBS_HELP, PLACEMENT, add_settings, choose_preset, flatten
from overparam.config import EXECUTORS, PRESETS, ConfigError, StudyConfig, resolve
from overparam.data import DataUnavailableError
from overparam.registry import Services

# The modules that run a command (the benchmark, the study and its executors, the report: pandas, scipy,
# matplotlib, torchvision) are imported only once the command is known, so `overparam --help` and a
# mistyped flag start about as fast as importing torch (tests/test_startup.py).

log = logging.getLogger("overparam")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="overparam",
        description="Mislabel a fraction of a data set, over-train a network until it fits every assigned "
        "label, then blur every image and measure how often the prediction changes.",
    )
    parser.add_argument("--version", action="version", version=f"overparam {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help in (
        ("reproduce", "run the whole study: every rate and seed, trained and probed, gathered into tables"),
        ("train", "train one run (one --rates value, one --seeds value)"),
        ("probe", "blur-probe one trained run (same settings as its `train`)"),
    ):
        subparser = commands.add_parser(name, help=help, description=help)
        subparser.add_argument(
            "--preset",
            choices=tuple(PRESETS),
            help="starting point for every setting below (default: paper on a GPU, else quick)",
        )
        add_settings(subparser)
        if name == "reproduce":
            subparser.add_argument("--jobs", type=int, default=1, help=JOBS_HELP)
    sweep_help = "run every study of a sweep file (TOML: preset, [settings], [grid]; see README)"
    sweep_parser = commands.add_parser("sweep", help=sweep_help, description=sweep_help)
    sweep_parser.add_argument("study", type=Path, help="the sweep file")
    sweep_parser.add_argument(
        "--executor", choices=EXECUTORS, default="local", help="where runs execute [local]"
    )
    sweep_parser.add_argument("--jobs", type=int, default=1, help=JOBS_HELP)
    sweep_parser.add_argument(
        "--cpus-per-run", type=int, default=1, help="CPUs reserved per run (ray, slurm) [1]"
    )
    sweep_parser.add_argument(
        "--gpus-per-run", type=float, default=0.0, help="GPUs per run, fractions share one [0]"
    )
    sweep_parser.add_argument("--ray-address", help="Ray cluster to join (default: start a local one)")
    sweep_parser.add_argument("--slurm-partition", help="SLURM partition")
    sweep_parser.add_argument("--slurm-minutes", type=int, default=240, help="SLURM time limit per run [240]")
    sweep_parser.add_argument(
        "--slurm-cluster", help="submitit cluster: unset detects SLURM; 'local' runs here"
    )
    sweep_parser.add_argument(
        "--report",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write the report at the end [yes]",
    )
    report_help = "analyse a finished output folder: report.html, summary.md, figures/, analysis/*.csv"
    report_parser = commands.add_parser("report", help=report_help, description=report_help)
    report_parser.add_argument("out", type=Path, help="the output folder of `reproduce` or `sweep`")
    report_parser.add_argument("--data-dir", type=Path, help="data folder, for the example images")
    report_parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples [1000]")
    status_help = "show done / running / failed / pending for every run of a sweep file or an output folder"
    status_parser = commands.add_parser("status", help=status_help, description=status_help)
    status_parser.add_argument(
        "study", type=Path, help="a sweep file, or the output folder of `reproduce` or `sweep`"
    )
    verify_help = "read every stored byte of a run store; discard (to recompute) what no longer matches"
    verify_parser = commands.add_parser("verify", help=verify_help, description=verify_help)
    add_settings(verify_parser, only=("store",))
    for command in (sweep_parser, status_parser):
        add_settings(command, only=PLACEMENT)
    bench_help = "time our trainer and probe against the ordinary PyTorch way; print the table, write a CSV"
    bench_options.add_arguments(commands.add_parser("bench", help=bench_help, description=bench_help))
    for command in registry.commands():
        command.add_arguments(commands.add_parser(command.name, help=command.help, description=command.help))
    return parser


def _sweep(arguments: argparse.Namespace) -> None:
    from overparam import study, sweep

    overrides = {name: getattr(arguments, name) for name in PLACEMENT}
    if arguments.command == "status" and arguments.study.is_dir():
        units, store = sweep.output_units(arguments.study)
        _print_status(sweep.units_status(units, store=Path(arguments.store) if arguments.store else store))
        return
    loaded = sweep.load_sweep(arguments.study, overrides=overrides)
    config = loaded.studies[0][1]
    options = study.run_options(config, progress=sys.stderr.isatty())
    if arguments.command == "status":
        _print_status(sweep.sweep_status(loaded, store=Path(options.store)))
        return
    executor = sweep.ExecutorOptions(
        executor=arguments.executor,
        jobs=arguments.jobs,
        cpus_per_run=arguments.cpus_per_run,
        gpus_per_run=arguments.gpus_per_run,
        ray_address=arguments.ray_address,
        slurm_partition=arguments.slurm_partition,
        slurm_minutes=arguments.slurm_minutes,
        slurm_cluster=arguments.slurm_cluster,
    )
    outcomes = sweep.run_sweep(
        loaded,
        options=options,
        executor=executor,
        write_report=_write_report if arguments.report else None,
    )
    counts = {state: sum(o.status == state for o in outcomes) for state in ("done", "cached")}
    print(f"results in {loaded.out}: {counts['done']} steps computed, {counts['cached']} cached")


class DamagedStoreError(RuntimeError):
    """`overparam verify` found damaged files."""


class ExperimentFailedError(RuntimeError):
    """An experiment's command (EXPERIMENTS) ended without its results; it said why."""


def _print_status(table: Any) -> None:
    print(table.to_string(index=False))
    print(", ".join(f"{count} {state}" for state, count in table["status"].value_counts().items()))


def _verify(arguments: argparse.Namespace) -> bool:
    """`overparam verify`: True when every stored step matched its record."""
    import overparam.execution  # noqa: F401  registers the study's kinds of step, whose records verify reads
    from overparam.store.files import resolve_store
    from overparam.store.steps import verify_store

    store = resolve_store(arguments.store)
    if not store.is_dir():
        raise ConfigError(f"no run store at {store}; give --store or set $OVERPARAM_STORE")
    checked, discarded = verify_store(store)
    for line in discarded:
        print(f"damaged: {line}")
    print(
        f"{checked} steps checked in {store}: "
        + (
            f"{len(discarded)} damaged steps discarded, to be computed again by the next study"
            if discarded
            else "every file matches its record"
        )
    )
    return not discarded


def _write_report(out: Path, **options: Any) -> Path:
    """`report.write_report`, imported on first use (matplotlib and the report only when one is written)."""
    from overparam.report import write_report

    return write_report(out, **options)


def run(arguments: argparse.Namespace) -> None:
    if getattr(arguments, "jobs", 1) < 1:
        raise ConfigError(f"--jobs must be at least 1, got {arguments.jobs}")
    if arguments.command == "bench":
        from overparam import bench

        bench.run_command(arguments)
        return
    command = next((c for c in registry.commands() if c.name == arguments.command), None)
    if command is not None:
        if command.run(arguments, Services(write_report=_write_report)) != 0:
            raise ExperimentFailedError(f"{arguments.command} did not finish; see the messages above")
        return
    if arguments.command == "verify":
        if not _verify(arguments):
            raise DamagedStoreError("the store held damaged files (listed above); they are discarded")
        return
    if arguments.command in ("sweep", "status"):
        _sweep(arguments)
        return
    if arguments.command == "report":
        if arguments.bootstrap < 100:
            raise ConfigError(f"--bootstrap must be at least 100, got {arguments.bootstrap}")
        from overparam.report import write_report

        try:
            written = write_report(
                arguments.out, data_dir=arguments.data_dir, n_bootstrap=arguments.bootstrap
            )
        except FileNotFoundError as error:
            raise ConfigError(str(error)) from None
        print(f"report in {written}")
        return
    from overparam import study

    settings = {f.name: flatten(getattr(arguments, f.name)) for f in fields(StudyConfig)}
    preset = choose_preset(arguments.preset, settings["device"])
    config = resolve(preset=preset, overrides=settings)
    progress = sys.stderr.isatty()
    if arguments.command == "reproduce":
        out = study.reproduce(
            config, preset=preset, jobs=arguments.jobs, progress=progress, write_report=_write_report
        )
        print(f"results in {out}: config.json, " + ", ".join(study.written_tables(out)))
    else:
        folder = study.single_step(config, preset=preset, step=arguments.command, progress=progress)
        print(f"results in {folder}")


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    arguments = build_parser().parse_args(argv)
    # Every command but `report` imports these anyway.
    from overparam.store.files import OutputError
    from overparam.study import RunsFailedError

    try:
        run(arguments)
    except ConfigError as error:
        print(f"overparam: error: {error}", file=sys.stderr)
        return 2
    except (DataUnavailableError, OutputError, RunsFailedError) as error:
        print(f"overparam: error: {error}", file=sys.stderr)
        return 1
    except (DamagedStoreError, ExperimentFailedError) as error:
        print(f"overparam: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # a file system error outside the store's own writes, e.g. a full disk
        print(f"overparam: error: {error}; earlier results are intact", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("overparam: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 0
