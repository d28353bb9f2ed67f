"""The `overparam` command. Its setting flags are generated from StudyConfig's fields."""

import argparse
import logging
import sys
import typing
from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import Any

import torch

from overparam import __version__
from overparam.config import PRESETS, ConfigError, StudyConfig, resolve
from overparam.data import DataUnavailableError
from overparam.storage import STUDY_TABLES, OutputError

log = logging.getLogger("overparam")


def _argument_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def checked(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    checked.__name__ = getattr(parse, "__name__", "value")
    return checked


def _add_settings(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preset",
        choices=tuple(PRESETS),
        help="starting point for every setting below (default: paper on a GPU, else quick)",
    )
    hints = typing.get_type_hints(StudyConfig)
    defaults = StudyConfig()
    for setting in fields(StudyConfig):
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
        _add_settings(commands.add_parser(name, help=help, description=help))
    return parser


def _choose_preset(preset: str | None, device: str | None) -> str:
    if preset is not None:
        return preset
    if device != "cpu" and torch.cuda.is_available():
        log.info("preset: paper (a GPU is available; pass --preset to choose)")
        return "paper"
    log.info("preset: quick (no GPU; pass --preset paper for the full study, hours on a CPU)")
    return "quick"


def run(arguments: argparse.Namespace) -> None:
    from overparam import study  # heavy imports only once the arguments are known to be valid

    settings = {f.name: _flatten(getattr(arguments, f.name)) for f in fields(StudyConfig)}
    preset = _choose_preset(arguments.preset, settings["device"])
    config = resolve(preset=preset, overrides=settings)
    progress = sys.stderr.isatty()
    if arguments.command == "reproduce":
        out = study.reproduce(config, preset=preset, progress=progress)
        print(f"results in {out}: config.json, " + ", ".join(f"{name}.csv" for name in STUDY_TABLES))
        return
    if len(config.runs()) != 1:
        raise ConfigError(
            f"`{arguments.command}` works on one run: give one --rates value and one --seeds value"
        )
    opened = study.open_study(config, preset=preset)
    step = study.train_run if arguments.command == "train" else study.probe_run
    step(opened.runs[0], opened.splits, progress=progress)
    study.gather_tables(opened.out, opened.runs)
    print(f"results in {opened.runs[0].paths.root}")


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    arguments = build_parser().parse_args(argv)
    try:
        run(arguments)
    except ConfigError as error:
        print(f"overparam: error: {error}", file=sys.stderr)
        return 2
    except (DataUnavailableError, OutputError) as error:
        print(f"overparam: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("overparam: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 0
