"""The run store's steps and executors on toy steps (no data, no training): identity from settings and inputs,
dependency order, cache, staleness when an input is recomputed, failures that stop only what depends on them,
and the same results from every executor. The study's own steps keep the ids they had."""

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from overparam.config import resolve
from overparam.execution import ProbeStep, TrainStep, execute, run_finished, steps_of
from overparam.store.executors import ExecutorOptions, execute_steps
from overparam.store.files import file_record, read_json, write_json
from overparam.store.steps import (
    Outcome,
    RunOptions,
    Step,
    StepContext,
    content_id,
    step_finished,
    step_status,
    verify_store,
    with_needs,
)
from overparam.study import when_runs_end


@dataclass(frozen=True)
class Number(Step):
    """A leaf: writes its value."""

    value: int
    kind = "test-number"

    def step_id(self) -> str:
        return content_id(self.kind, {"value": self.value})

    def compute(self, context: StepContext) -> dict[str, Any]:
        if (context.store / f"fail-{self.value}").exists():  # seen by workers of every executor
            raise RuntimeError(f"simulated failure of {self.value}")
        path = context.folder / "value.json"
        write_json({"value": self.value, "pid": os.getpid()}, path)
        return file_record([path])


@dataclass(frozen=True)
class Sum(Step):
    """Needs two steps and reads their artefacts."""

    left: Step
    right: Step
    kind = "test-sum"

    def step_id(self) -> str:
        return content_id(self.kind, {}, self.needs())

    def needs(self) -> tuple[Step, ...]:
        return (self.left, self.right)

    def compute(self, context: StepContext) -> dict[str, Any]:
        total = sum(
            json.loads((need.folder(context.store) / "value.json").read_text())["value"]
            for need in self.needs()
        )
        path = context.folder / "value.json"
        write_json({"value": total}, path)
        return file_record([path])


def value(step: Step, store: Path) -> int:
    return json.loads((step.folder(store) / "value.json").read_text())["value"]


def graph() -> tuple[Sum, list[Step]]:
    """((1 + 2) + (2 + 3)): Number(2) is needed twice and computed once."""
    one, two, three = Number(1), Number(2), Number(3)
    top = Sum(Sum(one, two), Sum(two, three))
    return top, [top]


def test_an_id_is_a_hash_of_the_settings_and_of_the_inputs_ids() -> None:
    assert Number(1).step_id() == Number(1).step_id() != Number(2).step_id()
    assert Sum(Number(1), Number(2)).step_id() != Sum(Number(1), Number(3)).step_id()
    assert Sum(Number(1), Number(2)).step_id() != Sum(Number(2), Number(1)).step_id()  # inputs in order
    assert Number(1).step_id().startswith("test-number-")


def test_steps_run_after_what_they_need_each_once(tmp_path: Path) -> None:
    top, wanted = graph()
    ordered = [step.step_id() for step in with_needs(wanted)]
    assert len(ordered) == 6 == len(set(ordered))  # 1, 2, 3 and three sums
    for step in with_needs(wanted):
        assert all(ordered.index(need.step_id()) < ordered.index(step.step_id()) for need in step.needs())

    options = RunOptions(store=str(tmp_path))
    outcomes = execute_steps(wanted, options)
    assert [o.status for o in outcomes] == ["done"] * 6
    assert value(top, tmp_path) == 8
    record = read_json(top.record(tmp_path))
    assert record["step"]["kind"] == "test-sum" and set(record["step"]["needs"]) == {
        need.step_id() for need in top.needs()
    }
    assert [o.status for o in execute_steps(wanted, options)] == ["cached"] * 6


def test_a_failed_input_fails_what_needs_it_and_nothing_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    top, wanted = graph()
    options = RunOptions(store=str(tmp_path))
    (tmp_path / "fail-3").touch()
    outcomes = {o.step_id: o for o in execute_steps(wanted, options)}
    assert outcomes[Number(3).step_id()].status == "failed"
    assert "simulated failure of 3" in outcomes[Number(3).step_id()].error
    assert outcomes[top.right.step_id()].error == f"MissingInput: {Number(3).step_id()} did not finish"
    assert outcomes[top.step_id()].status == "failed"
    assert outcomes[top.left.step_id()].status == "done" and value(top.left, tmp_path) == 3
    assert step_status(Number(3), tmp_path) == ("failed", "RuntimeError: simulated failure of 3")
    assert not top.right.folder(tmp_path).exists()  # never tried

    (tmp_path / "fail-3").unlink()
    again = {o.step_id: o.status for o in execute_steps(wanted, options)}
    assert again[top.left.step_id()] == "cached" and again[top.step_id()] == "done"
    assert value(top, tmp_path) == 8 and not Number(3).failure(tmp_path).exists()


def test_recomputing_an_input_makes_every_step_built_on_it_stale(tmp_path: Path) -> None:
    top, wanted = graph()
    options = RunOptions(store=str(tmp_path))
    execute_steps(wanted, options)
    record = Number(2).record(tmp_path)  # Number(2) computed again: the same value, a new record
    write_json({**read_json(record), "finished": "later"}, record)
    assert not step_finished(top.left, tmp_path) and not step_finished(top, tmp_path)
    assert step_finished(Number(1), tmp_path) and step_finished(Number(2), tmp_path)
    outcomes = {o.step_id: o.status for o in execute_steps(wanted, options)}
    assert {outcomes[Number(n).step_id()] for n in (1, 2, 3)} == {"cached"}
    assert outcomes[top.left.step_id()] == outcomes[top.right.step_id()] == outcomes[top.step_id()] == "done"
    assert value(top, tmp_path) == 8


def test_verify_discards_a_damaged_step_and_what_was_built_on_it(tmp_path: Path) -> None:
    top, wanted = graph()
    execute_steps(wanted, RunOptions(store=str(tmp_path)))
    damaged = Number(3).folder(tmp_path) / "value.json"
    damaged.write_bytes(damaged.read_bytes().replace(b"3", b"4"))  # same size, other bytes
    checked, discarded = verify_store(tmp_path)
    assert checked == 6
    assert discarded[0] == f"{Number(3).step_id()}: files do not match their record"
    assert sorted(discarded[1:]) == sorted(
        f"{step.step_id()} was made from inputs that have changed since" for step in (top.right, top)
    )


def test_a_cycle_is_refused() -> None:
    @dataclass(frozen=True)
    class Loop(Step):
        kind = "test-loop"

        def step_id(self) -> str:
            return "loop"

        def needs(self) -> tuple[Step, ...]:
            return (self,)

        def compute(self, context: StepContext) -> dict[str, Any]:
            raise AssertionError

    with pytest.raises(ValueError, match="cycle"):
        with_needs([Loop()])


def test_the_worker_pool_respects_the_order_and_gives_the_same_results(tmp_path: Path) -> None:
    # The scheduler is the same for every executor; SLURM and Ray are compared with the pool on a whole
    # sweep in tests/test_sweep.py.
    executor = ExecutorOptions(jobs=2)
    top, wanted = graph()
    (tmp_path / "fail-1").touch()
    ended = execute_steps(wanted, RunOptions(store=str(tmp_path)), executor)
    outcomes = {o.step_id: o.status for o in ended}
    assert outcomes[Number(1).step_id()] == outcomes[top.left.step_id()] == "failed", ended
    assert outcomes[top.right.step_id()] == "done" and value(top.right, tmp_path) == 5, ended
    (tmp_path / "fail-1").unlink()
    execute_steps(wanted, RunOptions(store=str(tmp_path)), executor)
    assert value(top, tmp_path) == 8
    pids = {read_json(Number(n).folder(tmp_path) / "value.json")["pid"] for n in (1, 2, 3)}
    assert os.getpid() not in pids  # each computed in a worker


# --- the study's steps --------------------------------------------------------------------------------------


def test_the_study_steps_keep_the_ids_and_folders_of_runs_and_probes() -> None:
    run = resolve(preset="smoke", overrides={"perturbations": ("blur", "noise")}).runs()[0]
    train, blur, noise = steps_of(run)
    assert isinstance(train, TrainStep) and train.step_id() == run.run_id()
    assert blur.step_id() == f"{run.run_id()}/{run.probe_id('blur')}"
    assert noise.step_id() == f"{run.run_id()}/{run.probe_id('noise')}"
    assert blur.needs() == (train,) and isinstance(noise, ProbeStep)


def test_records_written_before_steps_named_their_inputs_stay_valid(data_root: Path, tmp_path: Path) -> None:
    run = resolve(
        preset="smoke",
        overrides={
            "train_size": 200,
            "test_size": 100,
            "rates": (0.05,),
            "max_epochs": 1,
            "data_dir": str(data_root),
        },
    ).runs()[0]
    options = RunOptions(store=str(tmp_path), data_dir=str(data_root), download=False)
    assert execute(run, options).status == "done"
    train, probe = steps_of(run)
    for step in (train, probe):  # as the code before steps wrote them
        record = read_json(step.record(tmp_path))
        del record["step"]
        write_json(record, step.record(tmp_path))
    assert run_finished(run, tmp_path)
    record = read_json(probe.record(tmp_path))
    write_json({**record, "model_sha256": "0" * 64}, probe.record(tmp_path))  # a probe of another model
    assert not run_finished(run, tmp_path) and step_finished(train, tmp_path)
    assert execute(run, options).status == "done"
    assert read_json(probe.record(tmp_path))["step"]["needs"][run.run_id()]["record"] == (
        f"{run.run_id()}/training.json"
    )


def test_a_study_refreshes_its_tables_once_per_run_not_per_step() -> None:
    config = resolve(preset="smoke", overrides={"perturbations": ("blur", "noise"), "rates": (0.0, 0.02)})
    runs = config.runs()
    refreshed = []
    ended = when_runs_end(runs, lambda: refreshed.append(len(refreshed)))
    first, second = (steps_of(run) for run in runs)
    for step in first:
        ended(Outcome(step.step_id(), "done"))
    assert refreshed == [0]  # after the first run's training and both its probes
    for step in second[:-1]:
        ended(Outcome(step.step_id(), "failed"))
    assert refreshed == [0]
    ended(Outcome(second[-1].step_id(), "failed", "MissingInput"))
    assert refreshed == [0, 1]
