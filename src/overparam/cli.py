"""The `overparam` command. Its setting flags are generated from StudyConfig's fields."""

import argparse
import importlib
import logging
import sys
import typing
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from overparam import __version__, bench_options
from overparam.config import DEFAULT_LABEL_SCORES, EXECUTORS, PRESETS, ConfigError, StudyConfig, resolve
from overparam.data import DataUnavailableError

# The modules that run a command (the benchmark, the study and its executors, the report: pandas, scipy,
# matplotlib, torchvision) are imported only once the command is known, so `overparam --help` and a
# mistyped flag start about as fast as importing torch (tests/test_startup.py).

log = logging.getLogger("overparam")


def _argument_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def checked(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    checked.__name__ = getattr(parse, "__name__", "value")
    return checked


# The settings that only say where and how to run; sweeps and status take just these on the command line.
PLACEMENT = ("data_dir", "store", "device", "download")
JOBS_HELP = (
    "runs at once on this machine, each in its own process with a share of the CPU threads, or sharing the "
    "GPU [1]"
)


def _add_settings(parser: argparse.ArgumentParser, *, only: tuple[str, ...] | None = None) -> None:
    """A flag per StudyConfig field (or per field in `only`), typed and documented from its metadata."""
    hints = typing.get_type_hints(StudyConfig)
    defaults = StudyConfig()
    for setting in fields(StudyConfig):
        if only is not None and setting.name not in only:
            continue
        kind = hints[setting.name]
        options: dict[str, Any] = {"default": None, "help": setting.metadata["help"]}
        if "choices" in setting.metadata:
            options["choices"] = setting.metadata["choices"]
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is tuple:
            element = typing.get_args(kind)[0]
            options.update(nargs="+", type=_argument_type(setting.metadata.get("parse", element)))
        else:
            base = next(t for t in (int, float, str) if t is kind or t in typing.get_args(kind))
            options["type"] = _argument_type(setting.metadata.get("parse", base))
        default = getattr(defaults, setting.name)
        if default is not None and typing.get_origin(kind) is not tuple:
            options["help"] += f" [paper: {default}]"
        parser.add_argument("--" + setting.name.replace("_", "-"), **options)


def _flatten(values: Any) -> Any:
    """--sigmas 0:1:0.5 2 parses to ((0, 0.5, 1), (2,)): flatten to one tuple."""
    if isinstance(values, list):
        return tuple(v for value in values for v in (value if isinstance(value, tuple) else (value,)))
    return values


# Experiments with their own settings, each a package whose `command` module adds its flags and runs it.
EXPERIMENTS = {
    "landscape": "the loss landscape of memorisation: intrinsic dimension of each group's fit, paths between "
    "memorising minima, tunnel width",
    "simplicity": "simplicity bias on Boolean functions of 7 bits: the prior over functions, SGD against it, "
    "and label noise on the cube",
}


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
        (
            "label-errors",
            "find the data set's own label errors: train at rate 0, score every training image "
            "(--label-scores, default probe,dynamics,cleanlab), rank the suspects and estimate how many "
            "labels are wrong",
        ),
    ):
        subparser = commands.add_parser(name, help=help, description=help)
        subparser.add_argument(
            "--preset",
            choices=tuple(PRESETS),
            help="starting point for every setting below (default: paper on a GPU, else quick)",
        )
        _add_settings(subparser)
        if name in ("reproduce", "label-errors"):
            subparser.add_argument("--jobs", type=int, default=1, help=JOBS_HELP)
        if name == "label-errors":
            subparser.add_argument("--top", type=int, default=64, help="suspects shown in suspects.html [64]")
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
    _add_settings(verify_parser, only=("store",))
    for command in (sweep_parser, status_parser):
        _add_settings(command, only=PLACEMENT)
    bench_help = "time our trainer and probe against the ordinary PyTorch way; print the table, write a CSV"
    bench_options.add_arguments(commands.add_parser("bench", help=bench_help, description=bench_help))
    for name, help in EXPERIMENTS.items():
        experiment = importlib.import_module(f"overparam.{name}.command")
        experiment.add_arguments(commands.add_parser(name, help=help, description=help))
    return parser


def _choose_preset(preset: str | None, device: str | None) -> str:
    if preset is not None:
        return preset
    if device != "cpu" and torch.cuda.is_available():
        log.info("preset: paper (a GPU is available; pass --preset to choose)")
        return "paper"
    log.info("preset: quick (no GPU; pass --preset paper for the full study, hours on a CPU)")
    return "quick"


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
    outcomes = sweep.run_sweep(loaded, options=options, executor=executor, report=arguments.report)
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


def run(arguments: argparse.Namespace) -> None:
    if getattr(arguments, "jobs", 1) < 1:
        raise ConfigError(f"--jobs must be at least 1, got {arguments.jobs}")
    if arguments.command == "bench":
        from overparam import bench

        bench.run_command(arguments)
        return
    if arguments.command in EXPERIMENTS:
        experiment = importlib.import_module(f"overparam.{arguments.command}.command")
        if experiment.run(arguments) != 0:
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
    from overparam.store.files import STUDY_TABLES

    settings = {f.name: _flatten(getattr(arguments, f.name)) for f in fields(StudyConfig)}
    if arguments.command == "label-errors":
        if settings["rates"] not in (None, (0.0,)):
            raise ConfigError("label-errors scores the unmodified training set: leave out --rates (it is 0)")
        settings["rates"] = (0.0,)
        settings["label_scores"] = settings["label_scores"] or DEFAULT_LABEL_SCORES
    preset = _choose_preset(arguments.preset, settings["device"])
    config = resolve(preset=preset, overrides=settings)
    progress = sys.stderr.isatty()
    if arguments.command in ("reproduce", "label-errors"):
        out = study.reproduce(config, preset=preset, jobs=arguments.jobs, progress=progress)
        tables = [f"{name}.csv" for name in STUDY_TABLES if (out / f"{name}.csv").exists()]
        print(f"results in {out}: config.json, " + ", ".join(tables))
        if arguments.command == "label-errors":
            from overparam.label_errors.own import write_suspects

            summary = write_suspects(out, config, top=arguments.top)
            estimate = summary.get("wrong_fraction")
            if estimate:
                print(
                    f"estimated wrong labels: {estimate['mean']:.2%} (95 % interval {estimate['low']:.2%} to "
                    f"{estimate['high']:.2%} over {estimate['seeds']} seeds)"
                )
            print(f"suspects in {out / 'suspects.csv'} and {out / 'suspects.html'}")
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
