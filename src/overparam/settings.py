"""How a setting is declared, and the settings experiments add to every study.

A setting is a field of a frozen dataclass whose metadata documents it (`setting`): its help, and where it
has them its choices and its parser of command-line text. The shared settings are config.py's; an
experiment declares its own in its folder as one such dataclass and registers it as a `SettingsGroup`, an
entry point of the group "overparam.settings" (pyproject.toml). config.py composes `StudyConfig` and
`RunConfig` from the shared settings and every group's, so each setting has a flag, a line in config.json
and a place in the run's identity without the core naming an experiment.

An experiment's settings act after training (pruning, scoring, more models from the trained ones): they
never change the trained model, so they are left out of a run's id; at their defaults they are left out of a
study's id too, so adding a group changes no stored id. This module stays light: config.py loads the groups
while it is imported, and a group's module imports nothing of the core but this.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from importlib import metadata
from typing import Any

ENTRY_POINTS = "overparam.settings"


class ConfigError(ValueError):
    """An invalid setting; the message says which and what would be valid."""


def setting(default: Any, help: str, **extra: Any) -> Any:
    """A settings dataclass field: its default, its help text and extras (`choices`, `parse`)."""
    return field(default=default, metadata={"help": help, **extra})


def parse_names(text: str) -> tuple[str, ...]:
    """'blur,noise' -> ('blur', 'noise')."""
    return tuple(name.strip() for name in text.split(",") if name.strip())


def sigma_grid(start: float, stop: float, step: float) -> tuple[float, ...]:
    """start, start + step, ..., stop (inclusive), rounded to 6 decimals so 0.1 * 3 prints as 0.3."""
    count = round((stop - start) / step) + 1
    return tuple(float(round(start + i * step, 6)) for i in range(count))


def _valid(config: Any) -> None:
    """A group whose settings need no check beyond their declared types and choices."""


@dataclass(frozen=True)
class SettingsGroup:
    """An experiment's settings.

    settings: a frozen dataclass whose fields (declared with `setting`) become settings of every study and
        run, with those defaults, after the shared settings of the probe and before those of training.
    validate: `validate(config)` raises ConfigError for an invalid value of the group's settings, given the
        whole StudyConfig (a check may involve a shared setting).
    presets: the experiment's presets, by name: partial overrides of the paper preset, as config.PRESETS.
    """

    experiment: str
    settings: type
    validate: Callable[[Any], None] = _valid
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not is_dataclass(self.settings):
            raise TypeError(f"the settings of {self.experiment} must be a dataclass, got {self.settings!r}")

    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in fields(self.settings))


def load_groups() -> tuple[SettingsGroup, ...]:
    """Every installed group, in the order of its entry point's name (the order of their settings)."""
    found = sorted(metadata.entry_points(group=ENTRY_POINTS), key=lambda entry: entry.name)
    return tuple(entry.load() for entry in found)
