"""Run identity: ids stored by earlier code stay valid, and a setting hashes as its declared type."""

import re
from dataclasses import replace
from pathlib import Path

import pytest

from overparam.config import IDENTITY_SCHEMA, ConfigError, RunConfig, StudyConfig, resolve
from overparam.models import MODELS, REVISIONS
from overparam.sweep import load_sweep


def paper_run(rate: float, **changes: object) -> RunConfig:
    """A run of the paper preset as earlier code made it: one seed, trained to the target (the schedule
    every run had before --schedule existed)."""
    overrides = {"seeds": (0,), "schedule": "target", **changes}
    return next(run for run in resolve(preset="paper", overrides=overrides).runs() if run.rate == rate)


# The quick preset as it was when its ids below were stored.
QUICK_BEFORE = {"test_size": 5000, "sigmas": tuple(round(0.2 * i, 6) for i in range(26)), "max_epochs": 20}


# (run_id, probe_id) of these configurations as computed by the code before IDENTITY_SCHEMA existed; runs
# stored by it must keep their folders.
STORED_IDS = {
    "paper rate 0": (
        lambda: paper_run(0.0),
        "mnist-resnet18w64-n60000-rate0-seed0-6089726e",
        "probe-492cf2c8",
    ),
    "paper rate 0.01": (
        lambda: paper_run(0.01),
        "mnist-resnet18w64-n60000-rate0.01-seed0-03e4256c",
        "probe-492cf2c8",
    ),
    "quick rate 1/90 seed 2": (
        lambda: next(
            r
            for r in resolve(
                preset="quick", overrides={"seeds": (2,), "schedule": "target", **QUICK_BEFORE}
            ).runs()
            if r.rate == 1 / 90
        ),
        "mnist-resnet18w16-n6000-rate0.01111-seed2-f047b0b4",
        "probe-c95023c0",
    ),
    "smoke": (
        lambda: resolve(preset="smoke", overrides={}).runs()[0],
        "mnist-resnet18w4-n500-rate0-seed0-6791107e",
        "probe-34356382",
    ),
    "smoke rate 0.1": (
        lambda: resolve(preset="smoke", overrides={}).runs()[2],
        "mnist-resnet18w4-n500-rate0.1-seed0-059566fd",
        "probe-34356382",
    ),
    "bf16": (
        lambda: paper_run(1 / 125, precision="bf16"),
        "mnist-resnet18w64-n60000-rate0.008-seed0-cc743201",
        "probe-492cf2c8",
    ),
    "compiled": (
        lambda: paper_run(1 / 125, compile=True),
        "mnist-resnet18w64-n60000-rate0.008-seed0-b92af44d",
        "probe-492cf2c8",
    ),
    "clean sample": (
        lambda: paper_run(1 / 125, clean_sample=1000),
        "mnist-resnet18w64-n60000-rate0.008-seed0-2b0779d9",
        "probe-b2902555",
    ),
    "mlp": (
        lambda: resolve(preset="smoke", overrides={"model": "mlp"}).runs()[0],
        "mnist-mlpw4-n500-rate0-seed0-92ba33d0",
        "probe-34356382",
    ),
}
# Study ids (default output folders) of the same code.
STORED_STUDY_IDS = {"paper": "c3e6bab2", "smoke": "6f6021dc", "smoke mlp": "6392a609"}
# The cnn's ids before its revision 2 (AdaptiveMaxPool2d replaced): they must no longer be found.
CNN_BEFORE = ("mnist-cnnw4-n500-rate0-seed0-683ee7b7", "7e34debc")


def test_schema_version() -> None:
    assert IDENTITY_SCHEMA == 1


@pytest.mark.parametrize("name", list(STORED_IDS))
def test_ids_stored_by_earlier_code_are_unchanged(name: str) -> None:
    make, run_id, probe_id = STORED_IDS[name]
    run = make()
    assert (run.run_id(), run.probe_id()) == (run_id, probe_id)


def test_study_ids_stored_by_earlier_code_are_unchanged() -> None:
    paper_before = {"seeds": (0,), "schedule": "target"}
    assert resolve(preset="paper", overrides=paper_before).study_id() == STORED_STUDY_IDS["paper"]
    assert resolve(preset="smoke", overrides={}).study_id() == STORED_STUDY_IDS["smoke"]
    assert resolve(preset="smoke", overrides={"model": "mlp"}).study_id() == STORED_STUDY_IDS["smoke mlp"]


def test_the_schedule_joined_the_identity_at_the_value_every_earlier_run_had() -> None:
    target = paper_run(0.01)  # schedule "target", as every run stored before the setting
    assert target.schedule == "target" and target.run_id() == STORED_IDS["paper rate 0.01"][1]
    full = paper_run(0.01, schedule="full")
    assert full.run_id() != target.run_id() and full.probe_id() == target.probe_id()
    assert resolve(preset="paper", overrides={}).schedule == "full"  # the default makes new runs
    assert resolve(preset="paper", overrides={"seeds": (0,)}).study_id() != STORED_STUDY_IDS["paper"]
    assert replace(target, schedule="full").run_id() == full.run_id()


def test_a_revised_architecture_gets_new_ids_and_an_unrevised_one_keeps_them() -> None:
    assert REVISIONS == {"cnn": 2} and set(REVISIONS) <= set(MODELS)
    cnn = resolve(preset="smoke", overrides={"model": "cnn"})
    assert cnn.runs()[0].run_id() != CNN_BEFORE[0] and cnn.runs()[0].run_id().startswith("mnist-cnnw4-")
    assert cnn.study_id() != CNN_BEFORE[1]
    assert cnn.runs()[0].training()["model_revision"] == 2
    assert "model_revision" not in resolve(preset="smoke", overrides={}).runs()[0].training()
    # A checkpoint of the earlier cnn (its settings without the revision) does not resume the new one.
    run = cnn.runs()[0]
    earlier = {name: value for name, value in run.training().items() if name != "model_revision"}
    assert not run.trains_as(earlier) and run.trains_as(run.training())


@pytest.mark.parametrize(
    ("changes", "same"),
    [
        ({"rate": 0}, {"rate": 0.0}),
        ({"lr": 1}, {"lr": 1.0}),
        ({"target_acc": 1}, {"target_acc": 1.0}),
        ({"sigmas": (0, 1, 2)}, {"sigmas": (0.0, 1.0, 2.0)}),
        ({"width": 16.0, "seed": 2.0}, {"width": 16, "seed": 2}),
    ],
)
def test_a_run_built_with_other_number_types_hashes_as_its_declared_types(changes: dict, same: dict) -> None:
    run = resolve(preset="smoke", overrides={}).runs()[0]
    assert replace(run, **changes).run_id() == replace(run, **same).run_id()
    assert replace(run, **changes).probe_id() == replace(run, **same).probe_id()
    assert replace(run, **changes).training() == replace(run, **same).training()


def test_int_sigmas_hash_like_floats() -> None:
    run = resolve(preset="smoke", overrides={}).runs()[0]
    assert replace(run, sigmas=(0, 1)).probe_id() == replace(run, sigmas=(0.0, 1.0)).probe_id()
    assert replace(run, sigmas=[0, 1]).probe_id() == replace(run, sigmas=(0.0, 1.0)).probe_id()
    studies = [replace(StudyConfig(), sigmas=sigmas) for sigmas in ((0, 1), (0.0, 1.0))]
    assert studies[0].study_id() == studies[1].study_id()


def test_resolve_gives_settings_their_declared_types() -> None:
    config = resolve(preset="smoke", overrides={"rates": [0, 0.5], "lr": 1, "target_acc": 1, "width": 8.0})
    assert config.rates == (0.0, 0.5) and isinstance(config.rates[0], float)
    assert type(config.lr) is float and type(config.target_acc) is float and type(config.width) is int
    floats = resolve(
        preset="smoke", overrides={"rates": (0.0, 0.5), "lr": 1.0, "target_acc": 1.0, "width": 8}
    )
    assert [run.run_id() for run in config.runs()] == [run.run_id() for run in floats.runs()]
    assert config.study_id() == floats.study_id()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"width": "16"}, "width takes a whole number, got '16'"),
        ({"width": 1.5}, "width takes a whole number, got 1.5"),
        ({"width": True}, "width takes a whole number, got True"),
        ({"seeds": (0.5,)}, "seeds takes a whole number, got 0.5"),
        ({"rates": 0.1}, "rates takes a list of numbers"),
        ({"lr": "0.001"}, "lr takes a number, got '0.001'"),
        ({"compile": "yes"}, "compile takes true or false, got 'yes'"),
        ({"compile": 1}, "compile takes true or false, got 1"),
        ({"dataset": 3}, "dataset takes text, got 3"),
    ],
)
def test_settings_that_cannot_take_their_type_without_loss_are_named(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as caught:
        resolve(preset="smoke", overrides=changes)
    assert "\n" not in str(caught.value)


def test_a_run_with_a_wrong_type_has_no_id() -> None:
    run = resolve(preset="smoke", overrides={}).runs()[0]
    with pytest.raises(ConfigError, match=re.escape("seed takes a whole number, got 0.5")):
        replace(run, seed=0.5).run_id()


def write_sweep(folder: Path, text: str) -> Path:
    path = folder / "study.toml"
    path.write_text('preset = "smoke"\n' + text)
    return path


def sweep_ids(path: Path) -> list[str]:
    return [run.run_id() for run in load_sweep(path).runs()]


def test_int_and_float_settings_in_a_sweep_file_are_the_same_runs(tmp_path: Path) -> None:
    ints = sweep_ids(write_sweep(tmp_path, "[settings]\nrates = [0, 0.01]\nlr = 1\ntarget_acc = 1\n"))
    floats = sweep_ids(write_sweep(tmp_path, "[settings]\nrates = [0.0, 0.01]\nlr = 1.0\ntarget_acc = 1.0\n"))
    assert ints == floats and len(ints) == 2
    texts = sweep_ids(
        write_sweep(tmp_path, '[settings]\nrates = ["0", "1/100"]\nlr = 1.0\ntarget_acc = 1.0\n')
    )
    assert texts == floats
    runs = resolve(preset="smoke", overrides={}).runs()[:2]
    direct = [
        replace(run, rate=rate, lr=1.0, target_acc=1.0).run_id()
        for run, rate in zip(runs, (0, 0.01), strict=True)
    ]
    assert direct == floats
    # ... also as grid values, and int sigmas as floats
    grid = load_sweep(write_sweep(tmp_path, "[grid]\nlr = [1, 0.5]\nsigmas = [[0, 1], [0, 2]]\n"))
    assert [config.lr for _, config in grid.studies] == [1.0, 1.0, 0.5, 0.5]
    assert all(type(sigma) is float for _, config in grid.studies for sigma in config.sigmas)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[grid]\nwidth = ["16"]\n', "width takes a whole number, got '16'"),
        ('[settings]\nwidth = ["16"]\n', "width takes a whole number, got ['16']"),
        ("[settings]\nseeds = [0.5]\n", "seeds takes a whole number, got 0.5"),
        ("[grid]\nseeds = [[0], [0.5]]\n", "seeds takes a whole number, got 0.5"),
        ('[settings]\ncompile = "yes"\n', "compile takes true or false, got 'yes'"),
        ("[settings]\nrates = 0.1\n", "takes a list, e.g. rates = "),
        ("[settings]\nrates = [true]\n", "rates takes a number, got True"),
    ],
)
def test_wrong_types_in_a_sweep_file_are_one_line_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as caught:
        load_sweep(write_sweep(tmp_path, text))
    assert "\n" not in str(caught.value)
