"""The run store under faults a long sweep meets: a worker killed by the kernel, a damaged checkpoint, a
retrained model, a change of environment between two attempts, a group-shared folder, temporaries of dead
processes. Each test fails on the code before issue 10's fixes."""

import fcntl
import logging
import os
import signal
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch

import overparam.execution
import overparam.store.files
import overparam.store.steps
import overparam.train
from overparam.config import ConfigError, resolve
from overparam.execution import RunOptions, execute, run_finished, status, steps_of
from overparam.report import write_report
from overparam.store.executors import ExecutorOptions, execute_steps, local_threads
from overparam.store.files import (
    exclusive_lock,
    load_checked,
    read_json,
    remove_stale_temporaries,
    run_paths,
    write_csv,
    write_json,
)
from overparam.store.steps import verify_store
from overparam.study import RunsFailedError, study_steps
from overparam.sweep import load_sweep, run_sweep, sweep_status

TINY = {"train_size": 200, "test_size": 100, "max_epochs": 1}


def tiny_run(**changes: object):
    return resolve(preset="smoke", overrides={**TINY, "rates": (0.05,), **changes}).runs()[0]


def options(store: Path, data_root: Path, **changes: object) -> RunOptions:
    return RunOptions(store=str(store), data_dir=str(data_root), download=False, **changes)


def paths_of(run, store: Path):
    return run_paths(store, run_id=run.run_id(), probe_id=run.probe_id())


def study_tables(out: Path) -> dict[str, pd.DataFrame]:
    found = {name: pd.read_csv(out / f"{name}.csv") for name in ("curves", "flips", "mislabels", "metrics")}
    found["metrics"] = found["metrics"].drop(columns=["seconds"])
    return {
        name: frame.sort_values(list(frame.columns)).reset_index(drop=True) for name, frame in found.items()
    }


# --- grids over settings that are not key columns -----------------------------------------------------------

GRID = """
preset = "smoke"
out = "{out}"

[settings]
train_size = 200
test_size = 100
rates = [0, 0.05]
max_epochs = 1

[grid]
lr = [0.001, 0.002]
sigmas = [["0:1:0.5"], [0, 2]]
"""


def test_grids_over_training_and_probe_settings_keep_every_variant_apart(
    data_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "grid.toml"
    path.write_text(GRID.format(out=tmp_path / "out"))
    sweep = load_sweep(path)
    assert len(sweep.runs()) == 8  # 2 lr x 2 rates trained models, each probed on 2 sigma grids
    with caplog.at_level(logging.INFO):
        run_sweep(
            sweep,
            options=options(tmp_path / "store", data_root),
            executor=ExecutorOptions(),
            write_report=write_report,
        )
    assert caplog.text.count("trained mnist") == 4  # nothing trained twice
    assert "report  " in caplog.text

    curves = pd.read_csv(tmp_path / "out" / "curves.csv")
    grids = curves.groupby("variant")["level"].unique().map(sorted).to_dict()
    assert grids == {
        "lr=0.001 sigmas=0.0 0.5 1.0": [0.0, 0.5, 1.0],
        "lr=0.002 sigmas=0.0 0.5 1.0": [0.0, 0.5, 1.0],
        "lr=0.001 sigmas=0.0 2.0": [0.0, 2.0],
        "lr=0.002 sigmas=0.0 2.0": [0.0, 2.0],
    }
    # Each variant's rows are its own run's: the two learning rates trained different models.
    runs = pd.read_csv(tmp_path / "out" / "runs.csv")
    assert len(runs) == 8 and runs.groupby("lr")["run_id"].nunique().tolist() == [2, 2]
    at_zero = curves[curves["level"] == 0].set_index(["variant", "rate", "group"])["agree_assigned"]
    for lr in (0.001, 0.002):  # both probes of one model agree at sigma 0, which both measured
        a, b = (at_zero.loc[f"lr={lr} sigmas={grid}"] for grid in ("0.0 0.5 1.0", "0.0 2.0"))
        pd.testing.assert_series_equal(a, b)
    # The analysis keeps the four variants apart (before, it merged them or failed on duplicate labels).
    rate_summaries = pd.read_csv(tmp_path / "out" / "analysis" / "rate_summaries.csv")
    assert rate_summaries.groupby(["variant", "rate", "subset", "group", "summary"]).size().max() == 1
    assert set(rate_summaries["variant"]) == set(grids)
    # Every (model, probe) appears in the status, labelled with its own variant.
    states = sweep_status(sweep, store=tmp_path / "store")
    assert len(states) == 8 and (states["status"] == "done").all()


def test_a_report_that_fails_is_one_error_after_the_tables(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args, **kwargs):
        raise ValueError("cannot reindex on an axis with duplicate labels")

    path = tmp_path / "grid.toml"
    path.write_text(GRID.format(out=tmp_path / "out").replace("lr = [0.001, 0.002]\n", ""))
    sweep = load_sweep(path)
    with pytest.raises(
        RunsFailedError, match=r"the report failed .*duplicate labels.*tables .* are complete"
    ):
        run_sweep(
            sweep,
            options=options(tmp_path / "store", data_root),
            executor=ExecutorOptions(),
            write_report=broken,
        )
    assert len(pd.read_csv(tmp_path / "out" / "runs.csv")) == 4
    assert "Traceback" in (tmp_path / "out" / "report-error.txt").read_text()


# --- a worker killed by the kernel, a damaged checkpoint ----------------------------------------------------

FAULTS = """
preset = "smoke"
out = "{out}"

[settings]
train_size = 200
test_size = 100
rates = ["0", "1/20", "1/10"]
max_epochs = 3
target_acc = 1.0
"""

# Loaded by every Python process that starts with this folder on PYTHONPATH: the spawned worker of the run
# named in OVERPARAM_TEST_STALL_RUN stalls after its first checkpoint, so the test can kill it mid-run.
STALL = """
import os, time
import overparam.store.files as storage

_save, _run = storage.save_checked, os.environ["OVERPARAM_TEST_STALL_RUN"]


def save_checked(payload, path):
    _save(payload, path)
    if path.name == "checkpoint.pt" and path.parent.name == _run:
        time.sleep(600)


storage.save_checked = save_checked
"""


def kill_when_checkpointed(checkpoint: Path, killed: list[int]) -> None:
    """SIGKILL the process that holds the run's lock once the run has saved a checkpoint."""
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    owner = (checkpoint.parent / "run.lock").read_text().strip()
    pid = int(owner.rsplit(":", 1)[1])
    os.kill(pid, signal.SIGKILL)
    killed.append(pid)


def test_a_killed_worker_and_a_damaged_checkpoint_leave_the_sweep_complete_and_correct(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = ExecutorOptions(jobs=2)
    undisturbed = tmp_path / "undisturbed"
    undisturbed.mkdir()
    (undisturbed / "study.toml").write_text(FAULTS.format(out=undisturbed / "out"))
    reference = load_sweep(undisturbed / "study.toml")
    run_sweep(reference, options=options(undisturbed / "store", data_root), executor=local)

    (tmp_path / "study.toml").write_text(FAULTS.format(out=tmp_path / "out"))
    sweep, store = load_sweep(tmp_path / "study.toml"), tmp_path / "store"
    victim = sweep.runs()[1]
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(STALL)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(hooks), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("OVERPARAM_TEST_STALL_RUN", victim.run_id())
    killed: list[int] = []
    killer = threading.Thread(
        target=kill_when_checkpointed, args=(paths_of(victim, store).checkpoint, killed)
    )
    killer.start()
    with pytest.raises(RunsFailedError, match=r"2 of 6 steps failed .*killed by SIGKILL.*did not finish"):
        run_sweep(sweep, options=options(store, data_root), executor=local)
    killer.join()
    assert killed, "the worker was never killed"
    states = sweep_status(sweep, store=store).set_index("run_id")
    assert states.loc[victim.run_id(), "status"] == "failed"
    assert "SIGKILL" in states.loc[victim.run_id(), "error"]
    assert (states.drop(index=victim.run_id())["status"] == "done").all()

    monkeypatch.delenv("OVERPARAM_TEST_STALL_RUN")
    checkpoint = paths_of(victim, store).checkpoint
    damaged = bytearray(checkpoint.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    checkpoint.write_bytes(bytes(damaged))
    outcomes = run_sweep(sweep, options=options(store, data_root), executor=local)
    assert {o.step_id: o.status for o in outcomes} == {
        step.step_id(): "done" if step.run == victim else "cached" for step in study_steps(sweep.runs())
    }
    expected, found = study_tables(undisturbed / "out"), study_tables(tmp_path / "out")
    for name, table in expected.items():
        pd.testing.assert_frame_equal(found[name], table, obj=name)


def test_worker_log_lines_reach_the_parent_with_their_run_id(
    data_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runs = [tiny_run(seeds=(seed,)) for seed in (0, 1)]
    with caplog.at_level(logging.INFO):
        steps = [step for run in runs for step in steps_of(run)]
        execute_steps(steps, options(tmp_path / "store", data_root), ExecutorOptions(jobs=2))
    for run in runs:
        assert f"[{run.run_id()}]   epoch 1/1:" in caplog.text
        assert f"[{run.run_id()}] trained {run.run_id()}" in caplog.text


# --- the run's lock, the probe's model, the checkpoint's environment ----------------------------------------


def test_failures_are_recorded_and_cleared_under_the_steps_lock(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, run = tmp_path / "store", tiny_run()
    seen = []

    def locked(failure: Path) -> bool:  # another open file description cannot take the lock execute holds
        lock = next(failure.parent.glob("*.lock"))  # the step's: run.lock of a training, step.lock of a probe
        handle = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(handle)

    real_write_json, real_unlink = overparam.store.steps.write_json, Path.unlink

    def write_json(payload, path):
        if path.name == "failed.json":
            seen.append(("write", path.parent.name, locked(path)))
        return real_write_json(payload, path)

    def unlink(self, missing_ok=False):
        if self.name == "failed.json":
            seen.append(("remove", self.parent.name, locked(self)))
        return real_unlink(self, missing_ok=missing_ok)

    def broken(*args, **kwargs):
        raise RuntimeError("simulated")

    real_train = overparam.execution.train_run
    monkeypatch.setattr(overparam.store.steps, "write_json", write_json)
    monkeypatch.setattr(Path, "unlink", unlink)
    monkeypatch.setattr(overparam.execution, "train_run", broken)
    assert execute(run, options(store, data_root), wait=False).status == "failed"
    monkeypatch.setattr(overparam.execution, "train_run", real_train)
    assert execute(run, options(store, data_root), wait=False).status == "done"
    probe = run.probe_id()
    assert seen == [("write", run.run_id(), True), ("remove", run.run_id(), True), ("remove", probe, True)]


def test_execute_without_waiting_never_lets_go_of_the_lock_it_took(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken = []
    real_lock = overparam.store.steps.exclusive_lock

    def counting(path, **kwargs):
        taken.append(path.name)
        return real_lock(path, **kwargs)

    monkeypatch.setattr(overparam.store.steps, "exclusive_lock", counting)
    assert execute(tiny_run(), options(tmp_path / "store", data_root), wait=False).status == "done"
    assert taken == ["run.lock", "step.lock"]  # one per step: no gap between checking and working


def test_a_retrained_model_invalidates_the_probes_of_the_old_one_on_every_grid(
    data_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = tmp_path / "store"
    coarse, fine = tiny_run(sigmas=(0.0, 1.0)), tiny_run(sigmas=(0.0, 0.5, 1.0))
    assert coarse.run_id() == fine.run_id()
    for run in (coarse, fine):
        assert execute(run, options(store, data_root)).status == "done"
    probe = read_json(paths_of(fine, store).probe_record)
    assert probe["model_sha256"] == read_json(paths_of(fine, store).training)["files"]["model.pt"]

    # A probe made from another training record than the one there now is not finished.
    record = paths_of(fine, store).probe_record
    (training,) = probe["step"]["needs"].values()
    write_json({**probe, "step": {**probe["step"], "needs": {"x": {**training, "sha256": "0" * 64}}}}, record)
    assert not run_finished(fine, store) and status(fine, store) == ("pending", None)
    write_json(probe, record)

    model = paths_of(coarse, store).model
    model.write_bytes(model.read_bytes()[:-5])  # damaged: the next attempt trains again
    with caplog.at_level(logging.WARNING):
        assert execute(coarse, options(store, data_root)).status == "done"
    assert f"{coarse.run_id()}: files do not match their record" in caplog.text
    assert not run_finished(fine, store)  # its probe was of the old model
    assert status(fine, store) == ("pending", None)
    assert execute(fine, options(store, data_root)).status == "done"
    assert run_finished(fine, store)


@pytest.fixture
def restore_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("restore_threads")
def test_a_checkpoint_of_another_environment_is_not_resumed(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    run = tiny_run(max_epochs=3, target_acc=1.0)
    real_evaluate, calls = overparam.train.evaluate, []

    def evaluate_then_die(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed in epoch 2, after one checkpoint
        return real_evaluate(*args, **kwargs)

    store, reference = tmp_path / "store", tmp_path / "reference"
    monkeypatch.setattr(overparam.train, "evaluate", evaluate_then_die)
    with pytest.raises(KeyboardInterrupt):
        execute(run, options(store, data_root, threads=1))
    monkeypatch.undo()
    assert load_checked(paths_of(run, store).checkpoint)["environment"]["cpu_threads"] == 1
    with caplog.at_level(logging.WARNING):
        assert execute(run, options(store, data_root, threads=2)).status == "done"
    assert "training from the start, so that one environment makes the whole model" in caplog.text
    assert execute(run, options(reference, data_root, threads=2)).status == "done"
    metrics = [pd.read_csv(paths_of(run, s).metrics).drop(columns="seconds") for s in (store, reference)]
    pd.testing.assert_frame_equal(*metrics)
    assert read_json(paths_of(run, store).training)["environment"]["cpu_threads"] == 2


# --- status hashes nothing; verify hashes everything --------------------------------------------------------


def test_status_and_a_cached_execute_hash_no_file_but_verify_reads_every_byte(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, run = tmp_path / "store", tiny_run()
    assert execute(run, options(store, data_root)).status == "done"
    hashed = []
    real = overparam.store.files.file_digest

    def digest(path: Path) -> str:
        hashed.append(path.name)
        return real(path)

    for module in (overparam.store.files, overparam.store.steps):
        monkeypatch.setattr(module, "file_digest", digest)
    assert status(run, store) == ("done", None)
    assert execute(run, options(store, data_root)).status == "cached"
    assert set(hashed) == {"training.json"}  # the probe's input, a small record; no artefact
    hashed.clear()
    assert verify_store(store) == (2, [])  # the training and its probe
    trained = ["metrics.csv", "mislabels.csv", "model.pt", "final_predictions.npz", "dynamics.npz"]
    artefacts = [name for name in hashed if name != "training.json"]
    assert sorted(artefacts) == sorted([*trained, "predictions.npz", "curves.csv", "flips.csv"])


# --- a store shared by a group; temporaries of dead processes -----------------------------------------------


def test_files_and_locks_are_as_readable_as_the_umask_allows(tmp_path: Path) -> None:
    previous = os.umask(0o002)  # a group-shared store
    try:
        write_csv(pd.DataFrame({"a": [1]}), tmp_path / "table.csv")
        with exclusive_lock(tmp_path / "run.lock", wait=True):
            pass
    finally:
        os.umask(previous)
    for name in ("table.csv", "run.lock"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o664, name


def test_a_rename_is_made_durable_by_syncing_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced = []
    real_fsync = os.fsync

    def fsync(handle: int) -> None:
        synced.append(stat.S_ISDIR(os.fstat(handle).st_mode))
        real_fsync(handle)

    monkeypatch.setattr(os, "fsync", fsync)
    write_csv(pd.DataFrame({"a": [1]}), tmp_path / "table.csv")
    assert synced == [False, True]  # the file's bytes, then the folder's entry


def test_temporaries_of_dead_processes_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    host = overparam.store.files._host()
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    (tmp_path / "probe-1").mkdir()
    names = {
        "dead": tmp_path / "probe-1" / f".curves.csv.{host}.{dead}.abc123.tmp",
        "alive": tmp_path / f".model.pt.{host}.{os.getpid()}.def456.tmp",
        "other host, recent": tmp_path / f".metrics.csv.elsewhere.{dead}.ghi789.tmp",
        "other host, old": tmp_path / f".flips.csv.elsewhere.{dead}.jkl012.tmp",
        "ours": tmp_path / "curves.csv",
    }
    for path in names.values():
        path.write_text("x")
    day_and_more = time.time() - 2 * 24 * 3600
    os.utime(names["other host, old"], (day_and_more, day_and_more))
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted([names["dead"], names["other host, old"]])
    assert {key for key, path in names.items() if path.exists()} == {"alive", "other host, recent", "ours"}


def test_a_run_removes_the_temporaries_a_killed_attempt_left(data_root: Path, tmp_path: Path) -> None:
    store, run = tmp_path / "store", tiny_run()
    root = paths_of(run, store).root
    root.mkdir(parents=True)
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    left = root / f".checkpoint.pt.{overparam.store.files._host()}.{dead}.zzz999.tmp"
    left.write_bytes(b"half a checkpoint")
    assert execute(run, options(store, data_root)).status == "done"
    assert not left.exists()
    assert not list(store.rglob("*.tmp"))


# --- executors' settings ------------------------------------------------------------------------------------


def test_slurm_refuses_a_fraction_of_a_gpu(tmp_path: Path) -> None:
    path = tmp_path / "study.toml"
    path.write_text(FAULTS.format(out=tmp_path / "out"))
    executor = ExecutorOptions(executor="slurm", gpus_per_run=0.5, slurm_cluster="local")
    with pytest.raises(ConfigError, match=r"SLURM allocates whole GPUs: --gpus-per-run 0\.5"):
        run_sweep(load_sweep(path), options=RunOptions(store=str(tmp_path / "store")), executor=executor)
    assert not (tmp_path / "store").exists()


def test_threads_are_recorded_with_every_run(data_root: Path, tmp_path: Path) -> None:
    store, run = tmp_path / "store", tiny_run()
    execute_steps(steps_of(run), options(store, data_root))
    assert read_json(paths_of(run, store).training)["environment"]["cpu_threads"] == torch.get_num_threads()
    assert local_threads(1) == torch.get_num_threads()
    assert local_threads(10**6) == 1


# --- the command line: status of a study folder, verify, a file system error --------------------------------


def test_status_of_a_study_folder_and_verify_of_its_store(
    data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from overparam.cli import main

    out, store = tmp_path / "out", tmp_path / "store"
    command = ["reproduce", "--preset", "smoke", "--train-size", "200", "--test-size", "100", "--rates", "0"]
    command += ["0.05", "--max-epochs", "1", "--no-report", "--data-dir", str(data_root), "--out", str(out)]
    assert main([*command, "--store", str(store)]) == 0
    capsys.readouterr()
    assert main(["status", str(out)]) == 0  # the store comes from the folder's config.json
    shown = capsys.readouterr().out
    assert "2 done" in shown and shown.count(" all ") == 2  # the variant column of a reproduce study
    assert main(["verify", "--store", str(store)]) == 0
    assert "4 steps checked" in capsys.readouterr().out

    curves = next(store.glob("*rate0.05*/probe-*/curves.csv"))
    curves.write_bytes(curves.read_bytes().replace(b",", b";", 1))  # same size, other bytes
    assert main(["status", str(out)]) == 0 and "2 done" in capsys.readouterr().out  # status hashes nothing
    assert main(["verify", "--store", str(store)]) == 1
    printed = capsys.readouterr()
    assert "damaged: " in printed.out and "/probe-" in printed.out and "files do not match" in printed.out
    assert main(["status", str(out)]) == 0 and "1 done, 1 pending" in capsys.readouterr().out
    assert main([*command, "--store", str(store)]) == 0  # recomputed
    assert main(["status", str(out)]) == 0 and "2 done" in capsys.readouterr().out
    assert main(["status", str(tmp_path)]) == 2
    assert "holds no config.json" in capsys.readouterr().err


def test_a_file_system_error_anywhere_is_one_line(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import errno

    from overparam.cli import main

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "symlink", no_space)  # linking OUT/runs/<run_id>, outside the atomic writes
    command = ["reproduce", "--preset", "smoke", "--train-size", "200", "--test-size", "100", "--rates", "0"]
    command += ["--max-epochs", "1", "--data-dir", str(data_root), "--out", str(tmp_path / "out")]
    assert main([*command, "--store", str(tmp_path / "store")]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1].startswith("overparam: error: ") and "No space left on device" in error[-1]
    assert "Traceback" not in "\n".join(error)


READ_EVERYTHING = """
import os, sys
for parent, _, names in os.walk(sys.argv[1]):
    for name in names:
        with open(os.path.join(parent, name), "rb") as handle:
            handle.read()
print("read", sum(len(names) for _, _, names in os.walk(sys.argv[1])))
"""


@pytest.mark.skipif(
    os.geteuid() != 0 or not Path("/usr/bin/python3").exists(), reason="needs root to switch user"
)
def test_another_user_can_read_a_store_made_under_the_default_umask(data_root: Path) -> None:
    import shutil
    import subprocess
    import tempfile

    shared = Path(tempfile.mkdtemp(prefix="overparam-shared-", dir="/tmp"))
    try:
        shared.chmod(0o755)
        previous = os.umask(0o022)
        try:
            assert execute(tiny_run(), options(shared / "store", data_root)).status == "done"
        finally:
            os.umask(previous)

        def as_nobody() -> None:
            os.setgid(65534)
            os.setuid(65534)

        result = subprocess.run(
            ["/usr/bin/python3", "-c", READ_EVERYTHING, str(shared / "store")],
            preexec_fn=as_nobody,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr  # mkstemp's 0600 made every result unreadable
        assert int(result.stdout.split()[1]) >= 9
    finally:
        shutil.rmtree(shared)
