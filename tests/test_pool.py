"""The local executor's pool of long-lived workers: a worker serves step after step, keeping what it loaded;
a worker killed mid-step fails that step only and is replaced; the pool leaves no process behind, however
the study ends; and a step computed in a reused worker writes the same bytes as in a fresh process."""

import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from overparam.config import resolve
from overparam.data import load_split, resolve_data_dir
from overparam.execution import steps_of
from overparam.runs import load_splits
from overparam.store.executors import ExecutorOptions, _Pool, execute_steps
from overparam.store.files import file_record, read_json, write_json
from overparam.store.steps import (
    Outcome,
    RunOptions,
    Step,
    StepContext,
    content_id,
    execute_step,
    step_status,
)


@dataclass(frozen=True)
class Pid(Step):
    """Writes the pid of the process that computes it. It kills that process with SIGKILL first when the
    store holds `kill-<value>`, and waits up to a minute for `go-<value>` when it holds `wait-<value>`."""

    value: int
    after: tuple[Step, ...] = ()
    kind = "test-pid"

    def step_id(self) -> str:
        return content_id(self.kind, {"value": self.value}, self.after)

    def needs(self) -> tuple[Step, ...]:
        return self.after

    def compute(self, context: StepContext) -> dict[str, Any]:
        started = context.store / f"started-{self.value}"
        started.write_text(str(os.getpid()))
        if (context.store / f"kill-{self.value}").exists():
            os.kill(os.getpid(), signal.SIGKILL)
        if (context.store / f"wait-{self.value}").exists():
            deadline = time.monotonic() + 60
            while not (context.store / f"go-{self.value}").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        path = context.folder / "pid.json"
        write_json({"pid": os.getpid()}, path)
        return file_record([path])


def pid_of(step: Step, store: Path) -> int:
    return json.loads((step.folder(store) / "pid.json").read_text())["pid"]


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_worker_serves_step_after_step(tmp_path: Path) -> None:
    chain = Pid(3, (Pid(2, (Pid(1),)),))  # one after another: the first worker is idle for each next one
    independent = [Pid(value) for value in (4, 5, 6, 7)]
    outcomes = execute_steps([chain, *independent], RunOptions(store=str(tmp_path)), ExecutorOptions(jobs=2))
    assert [o.status for o in outcomes] == ["done"] * 7
    first, second, third = (
        pid_of(step, tmp_path) for step in (chain.after[0].after[0], chain.after[0], chain)
    )
    assert first == second == third != os.getpid()
    pids = {pid_of(step, tmp_path) for step in [chain, *independent]}
    assert len(pids) <= 2  # seven steps, two workers
    assert all(gone(pid) for pid in pids)  # stopped at the end


def test_a_killed_worker_fails_its_step_only_and_is_replaced(tmp_path: Path) -> None:
    store = tmp_path
    victim, others = Pid(1), [Pid(2), Pid(3), Pid(4)]
    built_on = Pid(5, (victim,))
    (store / "kill-1").touch()
    ended = execute_steps([*others, built_on], RunOptions(store=str(store)), ExecutorOptions(jobs=2))
    outcomes = {o.step_id: o for o in ended}
    death = "WorkerDied: its process was killed by SIGKILL (out of memory, or killed by hand)"
    assert outcomes[victim.step_id()] == Outcome(victim.step_id(), "failed", death)
    assert step_status(victim, store) == ("failed", death)  # failed.json, as before
    assert outcomes[built_on.step_id()].error == f"MissingInput: {victim.step_id()} did not finish"
    assert all(outcomes[step.step_id()].status == "done" for step in others)
    assert gone(int((store / "started-1").read_text()))

    (store / "kill-1").unlink()  # retried by the next study, which finds it failed
    again = {o.step_id: o.status for o in execute_steps([built_on], RunOptions(store=str(store)))}
    assert again == {victim.step_id(): "done", built_on.step_id(): "done"}
    assert not victim.failure(store).exists()


def test_a_dead_worker_is_replaced_by_a_new_one(tmp_path: Path) -> None:
    pool = _Pool(RunOptions(store=str(tmp_path)), 1)
    (tmp_path / "kill-1").touch()
    try:
        pool.submit(Pid(1))
        assert pool.next_outcome().status == "failed"
        pool.submit(Pid(2))
        assert pool.next_outcome().status == "done"
        pool.submit(Pid(3))
        assert pool.next_outcome().status == "done"
    finally:
        pool.close()
    killed = int((tmp_path / "started-1").read_text())
    assert killed != pid_of(Pid(2), tmp_path) == pid_of(Pid(3), tmp_path)
    assert gone(pid_of(Pid(2), tmp_path))


@pytest.mark.parametrize("stop", [KeyboardInterrupt, RuntimeError])
def test_the_pool_leaves_no_worker_behind_when_the_study_stops(tmp_path: Path, stop: type) -> None:
    """A study stopped (Ctrl-C, or an error while handling an outcome) while a worker is busy with a long
    step: the busy worker is killed and the idle one stopped, at once."""
    (tmp_path / "wait-1").touch()

    stopped = []

    def interrupt(outcome: Outcome) -> None:
        while not (tmp_path / "started-1").exists():
            time.sleep(0.05)
        stopped.append(time.monotonic())
        raise stop("stopped")

    with pytest.raises(stop, match="stopped"):
        execute_steps(
            [Pid(1), Pid(2)], RunOptions(store=str(tmp_path)), ExecutorOptions(jobs=2), on_outcome=interrupt
        )
    assert time.monotonic() - stopped[0] < 30  # not the minute that the busy step waits
    busy, idle = int((tmp_path / "started-1").read_text()), pid_of(Pid(2), tmp_path)
    assert busy != idle and gone(busy) and gone(idle)
    assert step_status(Pid(1), tmp_path) == ("pending", None)  # interrupted, not failed


# --- the same bytes from a reused worker --------------------------------------------------------------------


@pytest.fixture
def restore_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def digests(step: Step, store: Path) -> dict[str, Any]:
    """A step's record's digests of its files, with metrics.csv's timing column left out."""
    files = dict(read_json(step.record(store))["files"])
    metrics = step.folder(store) / "metrics.csv"
    if files.pop("metrics.csv", None):
        files["metrics.csv without seconds"] = pd.read_csv(metrics).drop(columns="seconds").to_csv()
    return files


@pytest.mark.usefixtures("restore_threads")
def test_a_reused_worker_writes_the_same_bytes_as_a_fresh_process(data_root: Path, tmp_path: Path) -> None:
    tiny = {
        "train_size": 200,
        "test_size": 100,
        "max_epochs": 1,
        "rates": (0.05,),
        "data_dir": str(data_root),
    }
    first, second = (
        resolve(preset="smoke", overrides={**tiny, "seeds": (seed,)}).runs()[0] for seed in (0, 1)
    )

    def options(store: Path) -> RunOptions:
        return RunOptions(store=str(store), data_dir=str(data_root), download=False, threads=1)

    def in_pool(store: Path, steps: list[Step]) -> None:
        pool = _Pool(options(store), 1)
        try:
            for step in steps:
                pool.submit(step)
                assert pool.next_outcome().status == "done"
        finally:
            pool.close()

    in_pool(tmp_path / "reused", [*steps_of(first), *steps_of(second)])  # the second run after the first
    in_pool(tmp_path / "fresh", steps_of(second))
    for step in steps_of(second):
        assert execute_step(step, options(tmp_path / "here")).status == "done"
    for step in steps_of(second):
        expected = digests(step, tmp_path / "fresh")
        assert digests(step, tmp_path / "reused") == expected, step.step_id()
        assert digests(step, tmp_path / "here") == expected, step.step_id()

    # Steps read the splits a process keeps, and never change them.
    kept = load_splits(dataset="mnist", data_dir=str(data_root), download=False, device="cpu")
    folder = resolve_data_dir(str(data_root))
    for split, images, labels in (
        ("train", kept.train_images, kept.train_labels),
        ("test", kept.test_images, kept.test_labels),
    ):
        fresh_images, fresh_labels = load_split(dataset="mnist", split=split, data_dir=folder, download=False)
        assert torch.equal(images, fresh_images) and torch.equal(labels, fresh_labels)
