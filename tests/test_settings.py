"""Experiments' settings live in their folders and reach every study through overparam.settings: config.py
names none of them, their order and ids are those of before the move, and an experiment installed from
outside (here a package made in a temporary folder) adds its settings, flags and presets with no edit to
any file of the project."""

import subprocess
import sys
import textwrap
from dataclasses import fields, replace
from pathlib import Path

import pytest

import overparam.config
from overparam.config import AFTER_TRAINING, GROUPS, PRESETS, RunConfig, StudyConfig, resolve
from overparam.experiments.label_errors.settings import LabelErrorSettings
from overparam.experiments.lottery.settings import LotterySettings
from overparam.settings import ConfigError, SettingsGroup


def test_each_experiment_declares_its_settings_in_its_folder_and_the_core_names_none() -> None:
    assert [group.experiment for group in GROUPS] == ["label_errors", "lottery"]
    source = Path(overparam.config.__file__).read_text()
    for group in GROUPS:
        for name in group.names():
            assert f"{name}:" not in source and f'"{name}"' not in source, name
    names = [f.name for f in fields(StudyConfig)]
    experiments = [f.name for f in fields(LabelErrorSettings)] + [f.name for f in fields(LotterySettings)]
    start = names.index("probabilities") + 1
    assert names[start : start + len(experiments)] == experiments  # config.json's order, as before the move
    assert names[start + len(experiments)] == "max_epochs"
    assert StudyConfig().lottery_methods == ("imp", "reinit", "random", "dual") and StudyConfig().folds == 5
    assert {"label-errors", "lottery", "lottery-paper"} <= set(PRESETS)


def test_experiment_settings_act_after_training_and_their_defaults_change_no_study_id() -> None:
    config = resolve(preset="smoke", overrides={})
    run = config.runs()[0]
    changed = {"label_scores": ("probe",), "folds": 3, "lottery_rounds": 2, "oneshot_pruning": (0.5,)}
    assert set(changed) <= set(AFTER_TRAINING)
    assert replace(run, **changed).run_id() == run.run_id()
    assert resolve(preset="smoke", overrides={"folds": 5}).study_id() == config.study_id()
    assert resolve(preset="smoke", overrides={"folds": 3}).study_id() != config.study_id()
    assert isinstance(run, RunConfig) and run.folds == 5


def test_each_group_validates_its_own_settings() -> None:
    with pytest.raises(ConfigError, match="--lottery-methods reinit and random take the mask of imp"):
        resolve(preset="lottery", overrides={"lottery_methods": ("reinit",)})
    with pytest.raises(ConfigError, match="--label-scores takes distinct names of probe, dynamics"):
        resolve(preset="smoke", overrides={"label_scores": ("blur",)})
    with pytest.raises(TypeError, match="the settings of toy must be a dataclass"):
        SettingsGroup(experiment="toy", settings=dict)


TOY = """
from dataclasses import dataclass
from overparam.settings import ConfigError, SettingsGroup, setting

@dataclass(frozen=True)
class ToySettings:
    toy_level: int = setting(0, "how many toy steps after training")

def validate(config):
    if config.toy_level < 0:
        raise ConfigError(f"--toy-level must be 0 or more, got {config.toy_level}")

SETTINGS = SettingsGroup(experiment="toy", settings=ToySettings, validate=validate,
                         presets={"toy": {"toy_level": 2, "train_size": 6000}})
"""

CHECK = """
from dataclasses import fields
from overparam.config import ConfigError, StudyConfig, resolve
names = [f.name for f in fields(StudyConfig)]
assert names.index("toy_level") == names.index("dual_ceiling") + 1, names  # groups in entry-point order
config = resolve(preset="toy", overrides={})
plain = resolve(preset="toy", overrides={"toy_level": 0})
assert config.toy_level == 2 and config.runs()[0].toy_level == 2
assert config.runs()[0].run_id() == plain.runs()[0].run_id()
try:
    resolve(preset="paper", overrides={"toy_level": -1})
except ConfigError as error:
    print(error)
"""


def test_an_experiment_installed_from_outside_adds_settings_flags_and_presets(tmp_path: Path) -> None:
    (tmp_path / "toy_settings.py").write_text(TOY)
    info = tmp_path / "toy_settings-0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-settings\nVersion: 0\n")
    (info / "entry_points.txt").write_text("[overparam.settings]\ntoy = toy_settings:SETTINGS\n")
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
    checked = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CHECK)], env=env, capture_output=True, text=True, check=True
    )
    assert checked.stdout.strip() == "--toy-level must be 0 or more, got -1"
    flags = subprocess.run(
        [sys.executable, "-m", "overparam", "train", "--help"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--toy-level TOY_LEVEL" in flags.stdout and "how many toy steps after training" in flags.stdout
