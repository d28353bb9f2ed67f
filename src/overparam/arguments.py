"""Command-line settings shared by every command that runs a study: a flag per StudyConfig field, typed and
documented from its metadata, and the choice of preset. Used by the shell and by experiments' commands."""

import argparse
import logging
import typing
from collections.abc import Callable
from dataclasses import fields
from typing import Any

import torch

from overparam.config import StudyConfig

log = logging.getLogger("overparam")


def argument_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
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


def add_settings(parser: argparse.ArgumentParser, *, only: tuple[str, ...] | None = None) -> None:
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
            options.update(nargs="+", type=argument_type(setting.metadata.get("parse", element)))
        else:
            base = next(t for t in (int, float, str) if t is kind or t in typing.get_args(kind))
            options["type"] = argument_type(setting.metadata.get("parse", base))
        default = getattr(defaults, setting.name)
        if default is not None and typing.get_origin(kind) is not tuple:
            options["help"] += f" [paper: {default}]"
        parser.add_argument("--" + setting.name.replace("_", "-"), **options)


def flatten(values: Any) -> Any:
    """--sigmas 0:1:0.5 2 parses to ((0, 0.5, 1), (2,)): flatten to one tuple."""
    if isinstance(values, list):
        return tuple(v for value in values for v in (value if isinstance(value, tuple) else (value,)))
    return values


def choose_preset(preset: str | None, device: str | None) -> str:
    if preset is not None:
        return preset
    if device != "cpu" and torch.cuda.is_available():
        log.info("preset: paper (a GPU is available; pass --preset to choose)")
        return "paper"
    log.info("preset: quick (no GPU; pass --preset paper for the full study, hours on a CPU)")
    return "quick"


def add_preset(
    parser: argparse.ArgumentParser, *, quick: str = "the CPU preset", extra: dict[str, str] | None = None
) -> None:
    """--preset of an experiment's command: smoke, quick or paper (and the command's `extra` presets, by name
    and description), by default paper with a GPU."""
    extra = extra or {}
    described = "".join(f", {name} ({text})" for name, text in extra.items())
    parser.add_argument(
        "--preset",
        choices=("smoke", "quick", "paper", *extra),
        default=None,
        help=f"smoke (seconds, for tests), quick ({quick}), paper (GPU){described}; default: paper with a "
        "GPU, quick otherwise",
    )


def add_placement(parser: argparse.ArgumentParser, *, name: str) -> None:
    """The flags that say where an experiment's command reads and writes and on what it runs: --out
    (default runs/<name>-<preset>-<hash>), --store, --data-dir, --no-download, --device, --jobs."""
    parser.add_argument("--out", default=None, help=f"output folder (default runs/{name}-<preset>-<hash>)")
    parser.add_argument("--store", default=None, help="run store (default $OVERPARAM_STORE, else runs/store)")
    parser.add_argument("--data-dir", default=None, help="data folder (else $OVERPARAM_DATA, else a cache)")
    parser.add_argument("--no-download", dest="download", action="store_false", help="never download data")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--jobs", type=int, default=1, help="steps computed at once on this machine")
