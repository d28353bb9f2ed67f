"""Runs as idempotent units: resume after kill -9, damaged files recomputed, locks, recorded failures."""

import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import overparam.execution
import overparam.train
from overparam.config import StudyConfig, resolve
from overparam.data import NORMALIZATION
from overparam.execution import RunOptions, execute, run_steps, status
from overparam.models import build_model
from overparam.perturb import PERTURBATIONS
from overparam.probe import predict_under_blur
from overparam.runs import load_splits
from overparam.store.files import (
    CorruptFileError,
    exclusive_lock,
    file_record,
    load_checked,
    read_json,
    run_paths,
    write_json,
)
from overparam.store.steps import verify_store

SETTINGS = {"train_size": 1000, "test_size": 200, "rates": (0.05,), "max_epochs": 6, "target_acc": 1.0}


def tiny_run(**changes: object):
    config = resolve(preset="smoke", overrides={**SETTINGS, **changes})
    return config.runs()[0]


def options(store: Path, data_root: Path) -> RunOptions:
    return RunOptions(store=str(store), data_dir=str(data_root), download=False)


def paths_of(run, store: Path):
    return run_paths(store, run_id=run.run_id(), probe_id=run.probe_id())


@pytest.fixture(scope="module")
def reference(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny run, trained and probed without interruption."""
    store = tmp_path_factory.mktemp("reference")
    assert execute(tiny_run(), options(store, data_root)).status == "done"
    return store


def assert_same_results(store: Path, reference: Path) -> None:
    run = tiny_run()
    done, expected = paths_of(run, store), paths_of(run, reference)
    seconds = ["seconds"]
    pd.testing.assert_frame_equal(
        pd.read_csv(done.metrics).drop(columns=seconds), pd.read_csv(expected.metrics).drop(columns=seconds)
    )
    for a, b in zip(load_checked(done.model).values(), load_checked(expected.model).values(), strict=True):
        assert torch.equal(a, b)
    for name in ("train", "test"):
        assert np.array_equal(np.load(done.predictions)[name], np.load(expected.predictions)[name])
    pd.testing.assert_frame_equal(pd.read_csv(done.curves), pd.read_csv(expected.curves))


def checkpoint_epoch(path: Path) -> int:
    """The last epoch a training checkpoint holds; 0 while there is none or it is not whole yet."""
    try:
        return load_checked(path)["metrics"][-1]["epoch"]
    except (FileNotFoundError, CorruptFileError):
        return 0


def test_kill_9_during_training_resumes_to_identical_results(
    data_root: Path, reference: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    run = tiny_run()
    checkpoint = paths_of(run, store).checkpoint
    command = [
        sys.executable, "-m", "overparam", "train", "--preset", "smoke", "--train-size", "1000",
        "--test-size", "200", "--rates", "0.05", "--max-epochs", "6", "--target-acc", "1.0",
        "--data-dir", str(data_root), "--store", str(store), "--out", str(tmp_path / "out"),
    ]  # fmt: skip
    log = tmp_path / "train.log"
    with log.open("w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    # Killed as soon as the first epoch's checkpoint is on disk: inside epoch 2, an epoch before it can
    # save another, however fast or slow this machine is.
    deadline = time.monotonic() + 600
    try:
        while checkpoint_epoch(checkpoint) < 1:
            assert process.poll() is None, f"training ended before its first checkpoint:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"no checkpoint within 600 s:\n{log.read_text()}"
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=60) == -signal.SIGKILL, f"training ended first:\n{log.read_text()}"
    finally:
        process.kill()  # nothing when it has ended
        process.wait()
    killed_after = checkpoint_epoch(checkpoint)
    assert 1 <= killed_after < 6
    assert execute(run, options(store, data_root)).status == "done"
    assert_same_results(store, reference)


def test_an_interrupted_probe_keeps_its_finished_sigma_chunks(
    data_root: Path, reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # sigma 0 is one unblurred pass of its own; 17 blurred sigmas make chunks of 8, 8 and 1
    run = tiny_run(sigmas=tuple(np.round(np.arange(0, 4.26, 0.25), 6)))
    store = tmp_path / "store"
    blur = PERTURBATIONS["blur"]
    real = blur.predict
    calls = []
    die_at = [3]  # the third call: train and test of the first chunk are done and saved

    def predict_then_die(images, levels, *args, **kwargs):
        calls.append(levels)
        if len(calls) == die_at[0]:
            raise KeyboardInterrupt
        return real(images, levels, *args, **kwargs)

    monkeypatch.setattr(blur, "predict", predict_then_die)
    with pytest.raises(KeyboardInterrupt):
        execute(run, options(store, data_root))
    assert paths_of(run, store).probe_part(0).exists() and not paths_of(run, store).probe_record.exists()
    calls.clear()
    die_at[0] = -1
    assert execute(run, options(store, data_root)).status == "done"
    assert [len(levels) for levels in calls] == [8, 8, 1, 1]  # chunk 0 was not probed again
    assert not paths_of(run, store).probe_parts.exists()

    monkeypatch.undo()
    fresh = tmp_path / "fresh"
    execute(run, options(fresh, data_root))
    for name in ("train", "test"):
        saved = np.load(paths_of(run, store).predictions)[name]
        assert np.array_equal(saved, np.load(paths_of(run, fresh).predictions)[name])


def test_a_finished_run_is_a_cache_hit(
    data_root: Path, reference: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(overparam.execution, "train_run", no_training)
    assert execute(tiny_run(), options(reference, data_root)).status == "cached"
    assert status(tiny_run(), reference) == ("done", None)


@pytest.mark.parametrize("damage", ["flip a byte", "truncate"])
def test_a_damaged_checkpoint_is_detected_and_recomputed(
    damage: str,
    data_root: Path,
    reference: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = tmp_path / "store"
    run = tiny_run()
    real_evaluate = overparam.train.evaluate
    calls = []

    def evaluate_then_die(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed in epoch 3, after two checkpoints
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(overparam.train, "evaluate", evaluate_then_die)
    with pytest.raises(KeyboardInterrupt):
        execute(run, options(store, data_root))
    monkeypatch.undo()
    checkpoint = paths_of(run, store).checkpoint
    data = bytearray(checkpoint.read_bytes())
    if damage == "truncate":
        del data[len(data) // 2 :]
    else:
        data[len(data) // 2] ^= 0xFF
    checkpoint.write_bytes(bytes(data))
    with caplog.at_level("WARNING"):
        assert execute(run, options(store, data_root)).status == "done"
    assert "does not match its checksum" in caplog.text and "from the start" in caplog.text
    assert_same_results(store, reference)


def test_damaged_final_weights_are_trained_again(
    data_root: Path, reference: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = tmp_path / "store"
    run = tiny_run()
    execute(run, options(store, data_root))
    paths = paths_of(run, store)
    paths.probe_record.unlink()
    paths.model.write_bytes(paths.model.read_bytes()[:-10])
    with caplog.at_level("WARNING"):
        assert execute(run, options(store, data_root)).status == "done"
    assert f"{run.run_id()}: files do not match their record" in caplog.text
    assert_same_results(store, reference)


def test_a_run_held_by_another_process_is_busy_or_waited_for(data_root: Path, reference: Path) -> None:
    run = tiny_run(seeds=(5,))
    paths = paths_of(run, reference)
    with exclusive_lock(paths.lock, wait=True, owner="someone else"):
        assert execute(run, options(reference, data_root), wait=False).status == "busy"
        assert status(run, reference) == ("running", None)
    assert status(run, reference) == ("pending", None)


def test_a_lock_dies_with_its_process(tmp_path: Path) -> None:
    lock = tmp_path / "run.lock"
    script = (
        "import fcntl, os, sys, time; handle = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
        "fcntl.flock(handle, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", script, str(lock)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with exclusive_lock(lock, wait=False) as held:
        assert not held
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    with exclusive_lock(lock, wait=False) as held:
        assert held


def test_a_failure_is_recorded_and_cleared_by_a_later_success(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "store"
    run = tiny_run(max_epochs=1)

    def broken(*args, **kwargs):
        raise RuntimeError("simulated out-of-memory")

    monkeypatch.setattr(overparam.execution, "train_run", broken)
    outcome = execute(run, options(store, data_root))
    assert outcome.status == "failed" and "simulated out-of-memory" in outcome.error
    assert status(run, store) == ("failed", "RuntimeError: simulated out-of-memory")
    monkeypatch.undo()
    assert execute(run, options(store, data_root)).status == "done"
    assert status(run, store) == ("done", None)
    assert not paths_of(run, store).failure.exists()


def test_concurrent_studies_on_one_folder_agree_and_train_each_run_once(
    data_root: Path, tmp_path: Path
) -> None:
    command = [
        sys.executable, "-m", "overparam", "reproduce", "--preset", "smoke", "--train-size", "500",
        "--test-size", "100", "--max-epochs", "1", "--no-report", "--data-dir", str(data_root),
        "--store", str(tmp_path / "store"), "--out", str(tmp_path / "out"),
    ]  # fmt: skip
    first = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    second = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    logs = [first.communicate(timeout=300)[1], second.communicate(timeout=300)[1]]
    assert first.returncode == 0 and second.returncode == 0, logs
    assert sum(log.count("trained mnist") for log in logs) == 3  # three runs, each trained by one process
    reference = tmp_path / "alone"
    alone = [*command[:-4], "--store", str(tmp_path / "store-alone"), "--out", str(reference)]
    assert subprocess.run(alone, capture_output=True, timeout=300).returncode == 0
    for name in ("curves", "flips", "mislabels"):
        pd.testing.assert_frame_equal(
            pd.read_csv(tmp_path / "out" / f"{name}.csv"), pd.read_csv(reference / f"{name}.csv")
        )


def test_study_id_ignores_the_store() -> None:
    assert replace(StudyConfig(), store="/a").study_id() == replace(StudyConfig(), store="/b").study_id()


@pytest.mark.parametrize(
    ("damaged", "discards"),
    [("curves.csv", 1), ("predictions.npz", 1), ("metrics.csv", 2)],  # a damaged training takes its probe
)
def test_a_damaged_result_file_is_detected_and_its_step_redone(
    damaged: str,
    discards: int,
    data_root: Path,
    reference: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = tmp_path / "store"
    run = tiny_run()
    execute(run, options(store, data_root))
    paths = paths_of(run, store)
    target = next(p for p in (paths.root, paths.probe) if (p / damaged).exists()) / damaged
    intact = target.read_bytes()
    target.write_bytes(intact[:-7] + b"garbage")  # same size: only reading every byte finds it
    assert status(run, store) == ("done", None)  # status and execute hash nothing
    checked, discarded = verify_store(store)
    assert checked == 2 and len(discarded) == discards  # a training and its probe
    assert discarded[0] == f"{target.parent.relative_to(store)}: files do not match their record"
    assert all("made from inputs that have changed" in line for line in discarded[1:])
    assert status(run, store) == ("pending", None)
    assert execute(run, options(store, data_root)).status == "done"
    assert_same_results(store, reference)
    target.write_bytes(target.read_bytes()[:-1])  # a different size is found without reading the file
    assert status(run, store) == ("pending", None)
    with caplog.at_level("WARNING"):
        assert execute(run, options(store, data_root)).status == "done"
    assert f"{target.parent.relative_to(store)}: files do not match their record" in caplog.text
    assert_same_results(store, reference)


def test_an_unreadable_record_means_not_finished(data_root: Path, reference: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    run = tiny_run()
    execute(run, options(store, data_root))
    paths_of(run, store).training.write_text('{"run_id": "trunc')
    assert execute(run, options(store, data_root)).status == "done"
    assert_same_results(store, reference)


def test_a_clean_sample_probes_a_subset_with_the_same_predictions(
    data_root: Path, reference: Path, caplog: pytest.LogCaptureFixture
) -> None:
    full, sampled = tiny_run(), tiny_run(clean_sample=120)
    assert sampled.run_id() == full.run_id() and sampled.probe_id() != full.probe_id()
    with caplog.at_level("INFO"):
        assert execute(sampled, options(reference, data_root)).status == "done"
    assert (
        "trained mnist" not in caplog.text and "a sample of 120 of 950" in caplog.text
    )  # the model is reused
    whole, part = (
        np.load(paths_of(full, reference).predictions),
        np.load(paths_of(sampled, reference).predictions),
    )
    columns = np.searchsorted(whole["train_index"], part["train_index"])
    assert np.array_equal(whole["train_index"][columns], part["train_index"])
    assert np.array_equal(part["train"], whole["train"][:, columns])
    assert np.array_equal(part["test"], whole["test"])
    curves = pd.read_csv(paths_of(sampled, reference).curves).set_index(["group", "level"])
    reference_curves = pd.read_csv(paths_of(full, reference).curves).set_index(["group", "level"])
    for group, n, population in (("mislabelled", 50, 50), ("clean", 120, 950), ("test", 200, 200)):
        assert (curves.loc[group, "n"] == n).all() and (curves.loc[group, "population"] == population).all()
    for group in ("mislabelled", "test"):
        pd.testing.assert_frame_equal(
            curves.loc[group].drop(columns="probe_id"), reference_curves.loc[group].drop(columns="probe_id")
        )
    flips = pd.read_csv(paths_of(sampled, reference).flips)
    assert (flips["split"] == "train").sum() == 170 and flips["mislabelled"].sum() == 50


def test_sigma_0_is_the_last_evaluation_of_training_and_equals_a_pass_of_its_own(
    data_root: Path, reference: Path, tmp_path: Path
) -> None:
    """The probe predicts sigma 0 itself; on the machine that trained the run, that is training's last
    evaluation, prediction for prediction, and probe.json says so."""
    run = tiny_run()
    shared = paths_of(run, reference)
    curves = pd.read_csv(shared.curves).set_index(["group", "level"])
    last = pd.read_csv(shared.metrics).iloc[-1]
    fit = curves.loc[["mislabelled", "clean"]].xs(0.0, level="level")
    assert fit["agree_assigned"].sum() == round(last["train_acc"] * fit["n"].sum())  # the same count
    test = curves.loc[("test", 0.0)]
    assert test["agree_true"] == round(last["test_acc"] * test["n"])
    assert read_json(shared.probe_record)["sigma0_disagreements"] == {"train": 0, "test": 0}
    with np.load(shared.final_predictions) as evaluation, np.load(shared.predictions) as probed:
        for name in ("train", "test"):
            assert np.array_equal(probed[name][0], evaluation[name])

    # A run whose training saved no predictions is probed alike, with nothing to check sigma 0 against.
    store = tmp_path / "store"
    own = paths_of(run, store)
    own.root.mkdir(parents=True)
    for path in (shared.metrics, shared.mislabels, shared.model):
        (own.root / path.name).write_bytes(path.read_bytes())
    record = read_json(shared.training)
    del record["bytes"]  # as recorded before training saved its predictions and records listed sizes
    write_json({**record, **file_record([own.metrics, own.mislabels, own.model])}, own.training)
    assert execute(run, options(store, data_root)).status == "done"
    assert not own.final_predictions.exists()
    assert read_json(own.probe_record)["sigma0_disagreements"] is None
    for name in ("train", "test"):
        assert np.array_equal(np.load(own.predictions)[name], np.load(shared.predictions)[name])
    pd.testing.assert_frame_equal(pd.read_csv(own.curves), pd.read_csv(shared.curves))

    # And the blur path at sigma 0 (the identity), in batches mixed with blurred sigmas, predicts the same.
    splits = load_splits(dataset=run.dataset, data_dir=str(data_root), download=False, device="cpu")
    model = build_model(name=run.model, width=run.width, mean=0.0, std=1.0)
    model.load_state_dict(load_checked(shared.model))  # the dataset's normalisation comes with the weights
    saved = np.load(shared.predictions)
    for split, index in (("train", "train_index"), ("test", "test_index")):
        images = getattr(splits, f"{split}_images")[torch.as_tensor(saved[index])]
        mixed = predict_under_blur(model, images, run.sigmas[:4], batch_size=100, progress=False)
        assert np.array_equal(mixed[0], saved[split][0])


def test_fp32_runs_keep_the_ids_they_had_before_precision_was_a_setting() -> None:
    assert tiny_run().run_id() == "mnist-resnet18w4-n1000-rate0.05-seed0-d0339c00"
    assert tiny_run(precision="bf16").run_id() != tiny_run().run_id()
    assert tiny_run(compile=True).run_id() != tiny_run().run_id()


def test_a_bf16_run_records_how_often_fp32_agrees_with_its_predictions(
    data_root: Path, tmp_path: Path
) -> None:
    run = tiny_run(precision="bf16", max_epochs=2)
    store = tmp_path / "store"
    assert execute(run, options(store, data_root)).status == "done"
    paths = paths_of(run, store)
    check = read_json(paths.probe_record)["fp32_check"]
    saved = np.load(paths.predictions)
    assert check["images"] == 1000 + 200 and check["predictions"] == 1200 * len(run.sigmas)  # every image
    mean, std = NORMALIZATION[run.dataset]
    model = build_model(name=run.model, width=run.width, mean=mean, std=std)
    model.load_state_dict(load_checked(paths.model))
    splits = load_splits(dataset=run.dataset, data_dir=str(data_root), download=False, device="cpu")
    agreeing = 0
    for split, index in (("train", "train_index"), ("test", "test_index")):
        images = getattr(splits, f"{split}_images")[torch.as_tensor(saved[index])]
        fp32 = predict_under_blur(model, images, run.sigmas, progress=False)
        agreeing += int((fp32 == saved[split]).sum())
    assert check["agreement"] == pytest.approx(agreeing / check["predictions"])
    assert check["low"] <= check["agreement"] <= check["high"]


def test_a_compiled_run_is_reproducible_and_checked_against_eager_fp32(
    data_root: Path, tmp_path: Path, compiled_models: list[torch.nn.Module]
) -> None:
    run = tiny_run(model="cnn", compile=True, max_epochs=2)  # a small graph: compiling takes less time
    stores = [tmp_path / "first", tmp_path / "second"]
    assert execute(run, options(stores[0], data_root)).status == "done"
    # The second time, the probe compiles afresh as in a process of its own: same kernels all the same.
    run_steps(run, options(stores[1], data_root), steps=("train",))
    torch._dynamo.reset()
    run_steps(run, options(stores[1], data_root), steps=("probe",))
    assert len(compiled_models) == 2 * len(stores)  # training's model and the probe's
    first, second = (paths_of(run, store) for store in stores)
    for a, b in zip(load_checked(first.model).values(), load_checked(second.model).values(), strict=True):
        assert torch.equal(a, b)
    for name in ("train", "test"):
        assert np.array_equal(np.load(first.predictions)[name], np.load(second.predictions)[name])
    record = read_json(first.probe_record)
    assert record["compile"] is True
    check = record["fp32_check"]
    assert check["predictions"] == 1200 * len(run.sigmas)
    assert check["agreement"] >= 0.99  # only near-ties may round the other way
    eager = tiny_run(model="cnn", max_epochs=2)  # uncompiled: a run of its own, along a close path
    assert execute(eager, options(tmp_path / "eager", data_root)).status == "done"
    eager_metrics = pd.read_csv(paths_of(eager, tmp_path / "eager").metrics)
    assert pd.read_csv(first.metrics)["train_acc"].iloc[-1] == pytest.approx(
        eager_metrics["train_acc"].iloc[-1], abs=0.02
    )
