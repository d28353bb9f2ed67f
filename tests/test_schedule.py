"""The training schedule (full or target), the probe's own sigma 0 with its checks, and refused rate sets."""

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_train import RUN, new_model, synthetic_data, train_until_killed, without_seconds

from overparam.blur import blur, blur_matrices
from overparam.config import PRESETS, ConfigError, StudyConfig, resolve, separating_train_size
from overparam.data import NORMALIZATION
from overparam.execution import RunOptions, execute, run_steps
from overparam.mislabel import per_class_count
from overparam.probe import identity_sigmas
from overparam.store.files import file_record, read_json, run_paths, write_json, write_npz
from overparam.train import train

# A seconds-long run on real MNIST; 0.1 is a grid sigma whose blur the network cannot see.
TINY = {"train_size": 200, "test_size": 100, "rates": (0.1,), "sigmas": (0.0, 0.1, 1.0), "max_epochs": 3}


def tiny_run(**changes: object):
    return resolve(preset="smoke", overrides={**TINY, **changes}).runs()[0]


def options(store: Path, data_root: Path) -> RunOptions:
    return RunOptions(store=str(store), data_dir=str(data_root), download=False)


def paths_of(run, store: Path):
    return run_paths(store, run_id=run.run_id(), probe_id=run.probe_id())


def test_full_is_the_default_and_every_verdict_preset_runs_three_seeds() -> None:
    assert StudyConfig().schedule == "full" and StudyConfig().seeds == (0, 1, 2)
    for preset in ("quick", "paper"):
        config = resolve(preset=preset, overrides={})
        assert config.schedule == "full" and config.seeds == (0, 1, 2)
        assert all(run.schedule == "full" for run in config.runs())
    assert resolve(preset="quick", overrides={}).train_size >= 6000
    assert "schedule" not in PRESETS["quick"]


def test_the_schedule_is_part_of_the_run_identity_and_target_keeps_earlier_ids() -> None:
    target, full = tiny_run(schedule="target"), tiny_run(schedule="full")
    assert target.run_id() != full.run_id() and target.probe_id() == full.probe_id()
    assert target.training()["schedule"] == "target"
    before = {name: value for name, value in target.training().items() if name != "schedule"}
    assert target.trains_as(before) and not full.trains_as(before)  # a checkpoint from before the setting


def test_the_cli_offers_both_schedules() -> None:
    from overparam.cli import build_parser

    parser = build_parser()
    arguments = parser.parse_args(["train", "--schedule", "target"])
    assert arguments.schedule == "target"
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--schedule", "sometimes"])
    with pytest.raises(ConfigError, match="--schedule must be one of full, target"):
        replace(StudyConfig(), schedule="sometimes").validate()


def test_full_trains_every_epoch_past_the_target_and_target_stops_there() -> None:
    data = synthetic_data()
    run = replace(RUN, max_epochs=12, target_acc=0.5)
    full = train(model=new_model(), data=data, run=replace(run, schedule="full"), progress=False).metrics
    stopped = train(model=new_model(), data=data, run=replace(run, schedule="target"), progress=False).metrics
    assert [row["epoch"] for row in full] == list(range(1, 13))
    first = next(row["epoch"] for row in full if row["train_acc"] >= run.target_acc)
    assert first < 12 and len(stopped) == first
    assert without_seconds(stopped) == without_seconds(full[:first])  # one trajectory, cut short


def test_a_resumed_full_run_is_identical_to_an_uninterrupted_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = synthetic_data()
    run = replace(RUN, max_epochs=8, target_acc=0.3, schedule="full")
    reference_model = new_model()
    reference = train(model=reference_model, data=data, run=run, progress=False)
    assert reference.metrics[2]["train_acc"] >= run.target_acc  # reached before the interruption

    checkpoint = tmp_path / "checkpoint.pt"
    train_until_killed(data=data, run=run, checkpoint=checkpoint, epochs=3, monkeypatch=monkeypatch)

    resumed_model = new_model()
    resumed = train(model=resumed_model, data=data, run=run, checkpoint=checkpoint, progress=False)
    assert len(resumed.metrics) == 8
    assert without_seconds(resumed.metrics) == without_seconds(reference.metrics)
    assert torch.equal(resumed.final.train_predictions, reference.final.train_predictions)
    for a, b in zip(resumed_model.state_dict().values(), reference_model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


@pytest.fixture(scope="module")
def stores(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three tiny runs, trained and probed: full and target schedules reaching a low target, and one
    missing an unreachable target."""
    made = {}
    for name, changes in {
        "full": {"schedule": "full", "target_acc": 0.01},
        "target": {"schedule": "target", "target_acc": 0.01},
        "missed": {"schedule": "full", "target_acc": 1.0},
    }.items():
        made[name] = tmp_path_factory.mktemp(name)
        assert execute(tiny_run(**changes), options(made[name], data_root)).status == "done"
    return made


def test_the_training_record_says_schedule_epochs_first_target_epoch_and_final_lr(
    stores: dict[str, Path],
) -> None:
    for name, changes, epochs, first in (
        ("full", {"schedule": "full", "target_acc": 0.01}, 3, 1),
        ("target", {"schedule": "target", "target_acc": 0.01}, 1, 1),
        ("missed", {"schedule": "full", "target_acc": 1.0}, 3, None),
    ):
        paths = paths_of(tiny_run(**changes), stores[name])
        result = read_json(paths.training)["result"]
        metrics = pd.read_csv(paths.metrics)
        assert result["schedule"] == changes["schedule"] and result["epochs"] == epochs == len(metrics)
        assert result["first_target_epoch"] == first
        assert result["final_lr"] == metrics["lr"].iloc[-1]
        assert result["reached_target"] == (metrics["train_acc"].iloc[-1] >= changes["target_acc"])
    full = pd.read_csv(paths_of(tiny_run(schedule="full", target_acc=0.01), stores["full"]).metrics)
    assert full["lr"].iloc[-1] < full["lr"].iloc[0]  # the one-cycle schedule ran down from its first epoch


def test_runs_csv_has_the_schedule_columns(data_root: Path, tmp_path: Path) -> None:
    from overparam.cli import main

    out = tmp_path / "out"
    args = ["reproduce", "--preset", "smoke", "--train-size", "200", "--test-size", "100", "--rates", "0.1"]
    args += ["--max-epochs", "1", "--schedule", "full", "--no-report", "--data-dir", str(data_root)]
    assert main([*args, "--store", str(tmp_path / "store"), "--out", str(out)]) == 0
    runs = pd.read_csv(out / "runs.csv")
    assert list(runs["schedule"]) == ["full"] and list(runs["epochs"]) == [1]
    assert {"first_target_epoch", "final_lr"} <= set(runs.columns)


def test_the_probe_predicts_sigma_0_itself_and_checks_it(stores: dict[str, Path]) -> None:
    for name, changes in (("full", {"target_acc": 0.01}), ("missed", {"target_acc": 1.0})):
        changes = {**changes, "schedule": "full"}
        run = tiny_run(**changes)
        paths = paths_of(run, stores[name])
        record = read_json(paths.probe_record)
        assert record["sigma0_disagreements"] == {"train": 0, "test": 0}
        assert record["identity_sigmas"] == [0.1] and record["identity_sigmas_changed"] == 0
        saved, last = np.load(paths.predictions), np.load(paths.final_predictions)
        for split in ("train", "test"):
            assert np.array_equal(saved[split][0], last[split])
        assert np.array_equal(saved["train"][1], saved["train"][0])  # sigma 0.1 changes nothing


def test_a_disagreement_with_training_is_counted_and_reported(
    data_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = tiny_run(schedule="target", target_acc=1.0, max_epochs=1)
    store = tmp_path / "store"
    run_steps(run, options(store, data_root), steps=("train",))
    paths = paths_of(run, store)
    with np.load(paths.final_predictions) as saved:
        last = {split: saved[split].copy() for split in ("train", "test")}
    last["train"][[0, 5, 9]] = (last["train"][[0, 5, 9]] + 1) % 10  # training "saw" other predictions
    last["test"][[3, 4]] = (last["test"][[3, 4]] + 1) % 10
    write_npz(paths.final_predictions, **last)
    record = read_json(paths.training)
    listed = [paths.root / name for name in record["files"]]
    write_json({**record, **file_record(listed)}, paths.training)
    with caplog.at_level("WARNING"):
        run_steps(run, options(store, data_root), steps=("probe",))
    assert read_json(paths.probe_record)["sigma0_disagreements"] == {"train": 3, "test": 2}
    assert "differ from training's last evaluation for 3 training and 2 test images" in caplog.text
    # The curves use the probe's own sigma 0, not the altered record of training.
    with np.load(paths.predictions) as probed:
        assert (probed["train"][0] != last["train"]).sum() == 3


def test_identity_sigmas_are_the_blurs_the_network_cannot_see(data_root: Path) -> None:
    from overparam.models import Normalize
    from overparam.runs import load_splits

    splits = load_splits(dataset="mnist", data_dir=str(data_root), download=False, device="cpu")
    images = [splits.train_images[:500], splits.test_images[:500]]
    normalize = Normalize(*NORMALIZATION["mnist"])
    assert identity_sigmas((0.0, 0.1, 0.2, 1.0), images, normalize=normalize) == (0.1,)
    # Not the identity matrix in float32, and not the images bitwise before normalisation: black pixels
    # next to lit ones rise by ~1e-22.
    matrix = blur_matrices([0.1], 28)[0]
    assert not torch.equal(matrix, torch.eye(28)) and bool((matrix.diagonal() == 1).all())
    pixels = images[0].float() / 255
    blurred = blur(pixels, matrix[None])[0]
    assert not torch.equal(blurred, pixels) and float((blurred - pixels).abs().max()) < 1e-20


@pytest.mark.parametrize(
    ("rates", "train_size", "message"),
    [
        ((1 / 90, 1 / 80), 5000, "rates 0.01111 (1.111%) and 0.0125 (1.250%) both mislabel 6 images"),
        ((0.0, 1 / 90, 1 / 80), 5000, "the smallest larger train size that separates them is 5200"),
        ((0.02, 0.024), 1000, "both mislabel 2 images per class at --train-size 1000"),
    ],
)
def test_coinciding_rates_are_refused_in_one_line(rates: tuple, train_size: int, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as caught:
        resolve(preset="smoke", overrides={"rates": rates, "train_size": train_size})
    assert "\n" not in str(caught.value)


def test_the_separating_train_size_is_the_smallest_above() -> None:
    def counts(rate: float, n: int) -> int:
        return per_class_count(rate=rate, n_images=n, n_classes=10)

    for low, high, above in ((1 / 90, 1 / 80, 5000), (1 / 125, 1 / 100, 500), (0.05, 0.051, 6000)):
        n = separating_train_size(low, high, above=above)
        assert n > above and n % 10 == 0 and counts(low, n) != counts(high, n)
        assert all(counts(low, m) == counts(high, m) for m in range(above // 10 * 10 + 10, n, 10))
    assert separating_train_size(1 / 90, 1 / 80, above=5000) == 5200
    # Distinct at every preset's size.
    for preset in PRESETS:
        config = resolve(preset=preset, overrides={})
        counts_at = [counts(rate, config.train_size) for rate in config.rates]
        assert len(set(counts_at)) == len(counts_at)
