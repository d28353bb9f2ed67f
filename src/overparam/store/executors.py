"""Executors: compute any set of steps, and the steps they need, in dependency order, on this machine (in
this process or `jobs` processes), on a Ray cluster or as SLURM jobs. One scheduler serves them all: a step
is handed to the executor once everything it needs has finished; a step whose input failed fails without
being tried, naming that input; everything else goes on.
"""

import contextlib
import logging
import logging.handlers
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from multiprocessing import connection, get_context
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from overparam.config import EXECUTORS, ConfigError
from overparam.store.steps import (
    Outcome,
    RunOptions,
    Step,
    execute_step,
    record_death,
    step_finished,
    with_needs,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExecutorOptions:
    """How to spread steps: `jobs` local processes, or Ray / SLURM resources per step."""

    executor: str = "local"
    jobs: int = 1
    cpus_per_run: int = 1
    gpus_per_run: float = 0.0  # fractions let small models share a GPU (Ray)
    ray_address: str | None = None
    slurm_partition: str | None = None
    slurm_minutes: int = 240
    slurm_cluster: str | None = None  # None: detect SLURM; "local" runs the jobs as local processes


def check_resources(executor: ExecutorOptions) -> None:
    if executor.executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {executor.executor!r}; choose one of {', '.join(EXECUTORS)}")
    if executor.jobs < 1 or executor.cpus_per_run < 1 or executor.gpus_per_run < 0:
        raise ConfigError("--jobs and --cpus-per-run must be at least 1, --gpus-per-run at least 0")
    if executor.executor == "slurm" and executor.gpus_per_run != int(executor.gpus_per_run):
        raise ConfigError(
            f"SLURM allocates whole GPUs: --gpus-per-run {executor.gpus_per_run:g} is not a whole number; "
            "use --executor ray to share a GPU between runs"
        )


def local_threads(jobs: int) -> int:
    """CPU threads per step when `jobs` steps share this machine: PyTorch's default split evenly. A step's
    rounding depends on its thread count, which its records keep."""
    return max(1, torch.get_num_threads() // jobs)


def execute_logged(step: Step, options: RunOptions) -> Outcome:
    """`execute_step` in a worker of Ray or SLURM, whose log lines (epochs, resumes, outcomes) go to its
    stderr with the step id in front: Ray forwards them to the driver, submitit keeps them in the job log."""
    logging.basicConfig(
        level=logging.INFO, format=f"[{step.step_id()}] %(message)s", stream=sys.stderr, force=True
    )
    return execute_step(step, options)


class _Backend:
    """Where ready steps go: `submit` hands one over, `next_outcome` waits for any one to end."""

    capacity = sys.maxsize  # steps that may be in flight at once

    def submit(self, step: Step) -> None:
        raise NotImplementedError

    def next_outcome(self) -> Outcome:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _InProcess(_Backend):
    capacity = 1

    def __init__(self, options: RunOptions) -> None:
        self.options, self.queued = options, []

    def submit(self, step: Step) -> None:
        self.queued.append(step)

    def next_outcome(self) -> Outcome:
        return execute_step(self.queued.pop(0), self.options)


class _ToParent:
    """A worker's end of its pipe to the parent: log records (as `QueueHandler` hands them over) and its
    steps' outcomes, each message sent whole whichever thread sends it."""

    def __init__(self, pipe: connection.Connection) -> None:
        self.pipe, self.lock = pipe, threading.Lock()

    def send(self, kind: str, payload: Any) -> None:
        with self.lock:
            self.pipe.send((kind, payload))

    def put_nowait(self, record: logging.LogRecord) -> None:
        self.send("log", record)


def _serve(pipe: connection.Connection) -> None:
    """A local worker process: `execute_step` each (step, options) received until told to stop (None) or
    the parent is gone, its log records sent to the parent with the step's id in front. Ctrl-C reaches the
    whole process group; the parent alone decides what stops, and kills its busy workers when it stops."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = _ToParent(pipe)
    handler = logging.handlers.QueueHandler(parent)  # a queue to it: anything with put_nowait
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    prefix = ""

    def with_step_id(record: logging.LogRecord) -> bool:
        record.msg, record.args = prefix + record.getMessage(), None
        return True

    handler.addFilter(with_step_id)
    while True:
        try:
            task = pipe.recv()
        except EOFError:
            return
        if task is None:
            return
        step, options = task
        prefix = f"[{step.step_id()}] "
        parent.send("outcome", execute_step(step, options))


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        cause = " (out of memory, or killed by hand)" if -exitcode == signal.SIGKILL else ""
        return f"WorkerDied: its process was killed by {name}{cause}"
    return f"WorkerDied: its process exited with code {exitcode} before reporting"


@dataclass
class _Worker:
    process: Any  # a multiprocessing Process
    pipe: connection.Connection
    step: Step | None = None  # the step it computes; None while idle


class _Pool(_Backend):
    """`jobs` worker processes that live until `close`, each computing one step at a time and keeping what
    a process caches (data sets, compiled models) for its next steps. A worker that dies fails its own step
    only, and a new one takes its place when a step is next submitted."""

    def __init__(self, options: RunOptions, jobs: int) -> None:
        self.options, self.capacity = options, jobs
        self.context = get_context("spawn")  # a forked child would inherit PyTorch's threads and locks
        self.workers: list[_Worker] = []

    def submit(self, step: Step) -> None:
        for dead in [w for w in self.workers if w.step is None and not w.process.is_alive()]:
            self.workers.remove(dead)  # died while idle (killed by hand, or out of memory)
            dead.pipe.close()
        worker = next((worker for worker in self.workers if worker.step is None), None)
        if worker is None:
            pipe, theirs = self.context.Pipe()
            process = self.context.Process(target=_serve, args=(theirs,), daemon=True)
            process.start()
            theirs.close()  # so that its death reads as the end of the pipe here
            worker = _Worker(process, pipe)
            self.workers.append(worker)
        worker.pipe.send((step, self.options))
        worker.step = step

    def next_outcome(self) -> Outcome:
        while True:
            busy = [worker for worker in self.workers if worker.step is not None]
            ready = set(connection.wait([w.pipe for w in busy] + [w.process.sentinel for w in busy]))
            for worker in busy:
                if worker.process.sentinel in ready:
                    worker.process.join()
                if worker.pipe in ready or worker.process.sentinel in ready:
                    outcome = self._receive(worker)
                    if outcome is not None:
                        return outcome

    def _receive(self, worker: _Worker) -> Outcome | None:
        """The outcome of `worker`'s step once it has one (or has died, which is recorded as the step's
        failure), after relaying its log records; None while it is still at work."""
        step = worker.step
        assert step is not None
        try:
            while worker.pipe.poll():
                kind, payload = worker.pipe.recv()
                if kind == "outcome":
                    worker.step = None
                    return payload
                logging.getLogger(payload.name).handle(payload)
        except (EOFError, OSError):  # it died, before reporting or in the middle of a message
            worker.process.join()
        if worker.process.exitcode is None:
            return None
        self.workers.remove(worker)
        worker.pipe.close()
        outcome = Outcome(step.step_id(), "failed", _death(worker.process.exitcode))
        log.error("failed  %s: %s", step.step_id(), outcome.error)
        record_death(step, self.options, outcome.error)
        return outcome

    def close(self) -> None:
        """Stop the idle workers and kill the busy ones (whose steps, interrupted, are not recorded)."""
        for worker in self.workers:
            if worker.step is None:
                with contextlib.suppress(OSError):  # unless it died meanwhile
                    worker.pipe.send(None)
            else:
                worker.process.kill()
        for worker in self.workers:
            worker.process.join(timeout=10)
            if worker.process.exitcode is None:
                worker.process.kill()
                worker.process.join()
            worker.pipe.close()
        self.workers = []


class _Ray(_Backend):
    def __init__(self, options: RunOptions, executor: ExecutorOptions) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigError("--executor ray needs Ray: pip install 'overparam[ray]'") from None
        if not ray.is_initialized():
            ray.init(address=executor.ray_address, include_dashboard=False, log_to_driver=True)
        self.ray, self.options = ray, options
        self.task = ray.remote(num_cpus=executor.cpus_per_run, num_gpus=executor.gpus_per_run)(execute_logged)
        self.pending: dict[Any, Step] = {}

    def submit(self, step: Step) -> None:
        self.pending[self.task.remote(step, self.options)] = step

    def next_outcome(self) -> Outcome:
        (reference,), _ = self.ray.wait(list(self.pending), num_returns=1)
        step = self.pending.pop(reference)
        try:
            return self.ray.get(reference)
        except self.ray.exceptions.RayError as error:  # the worker itself died (node lost, out of memory)
            return Outcome(step.step_id(), "failed", f"{type(error).__name__}: {error}")


class _Slurm(_Backend):
    """A job per step, submitted when its inputs are done; the jobs of one wave form one array."""

    def __init__(self, options: RunOptions, executor: ExecutorOptions, folder: Path) -> None:
        try:
            import submitit
        except ImportError:
            raise ConfigError("--executor slurm needs submitit: pip install 'overparam[slurm]'") from None
        self.array = submitit.AutoExecutor(folder=folder, cluster=executor.slurm_cluster)
        parameters: dict[str, Any] = {
            "timeout_min": executor.slurm_minutes,
            "cpus_per_task": executor.cpus_per_run,
            "gpus_per_node": int(executor.gpus_per_run),
        }
        if executor.slurm_partition:
            parameters["slurm_partition"] = executor.slurm_partition
        self.array.update_parameters(**parameters)
        self.options, self.folder, self.ready, self.jobs = options, folder, [], []

    def submit(self, step: Step) -> None:
        self.ready.append(step)

    def _flush(self) -> None:
        if self.ready:
            jobs = self.array.map_array(execute_logged, self.ready, [self.options] * len(self.ready))
            log.info(
                "submitted %d jobs (%s), logs in %s", len(jobs), jobs[0].job_id.split("_")[0], self.folder
            )
            self.jobs += list(zip(jobs, self.ready, strict=True))
            self.ready = []

    def next_outcome(self) -> Outcome:
        self._flush()
        while True:
            for position, (job, step) in enumerate(self.jobs):
                if job.done():
                    del self.jobs[position]
                    try:
                        return job.result()
                    except Exception as error:  # the job died: time limit, node failure, out of memory
                        return Outcome(step.step_id(), "failed", f"{type(error).__name__}: {error}")
            time.sleep(2)


def execute_steps(
    steps: Sequence[Step],
    options: RunOptions,
    executor: ExecutorOptions = ExecutorOptions(),
    *,
    slurm_folder: Path | None = None,
    on_outcome: Callable[[Outcome], object] = lambda outcome: None,
) -> list[Outcome]:
    """Compute `steps` and everything they need that is not finished, each after its inputs; returns an
    outcome per step, in the order they ended, and calls `on_outcome` with each as it comes. Local steps get
    this machine's CPU threads split between `jobs`; on a cluster, the CPUs each reserved."""
    check_resources(executor)
    everything = with_needs(steps)
    store = Path(options.store)
    if executor.executor == "local":
        options = replace(options, threads=local_threads(executor.jobs))
        backend: _Backend = (
            _InProcess(options)
            if executor.jobs == 1
            else _Pool(replace(options, progress=False), executor.jobs)
        )
    elif executor.executor == "ray":
        backend = _Ray(replace(options, threads=executor.cpus_per_run), executor)
    else:
        folder = slurm_folder or store / "slurm"
        backend = _Slurm(replace(options, threads=executor.cpus_per_run), executor, folder)
    outcomes: list[Outcome] = []
    ended: dict[str, str] = {}

    def end(outcome: Outcome) -> None:
        ended[outcome.step_id] = outcome.status
        outcomes.append(outcome)
        bar.update()
        error = f": {outcome.error}" if outcome.error else ""
        log.info(
            "%-7s %s (%d of %d steps)%s",
            outcome.status,
            outcome.step_id,
            len(outcomes),
            len(everything),
            error,
        )
        on_outcome(outcome)

    waiting, in_flight = [], 0
    bar = tqdm(total=len(everything), unit="step", desc="steps", disable=not sys.stderr.isatty())
    try:
        for step in everything:  # the finished ones are reported without starting a worker
            if step_finished(step, store):
                end(Outcome(step.step_id(), "cached"))
            else:
                waiting.append(step)
        while waiting or in_flight:
            for step in list(waiting):
                states = [ended.get(need.step_id()) for need in step.needs()]
                failed = [
                    need.step_id()
                    for need, state in zip(step.needs(), states, strict=True)
                    if state in ("failed", "busy")
                ]
                if failed:
                    waiting.remove(step)
                    end(
                        Outcome(step.step_id(), "failed", f"MissingInput: {', '.join(failed)} did not finish")
                    )
                elif all(state in ("done", "cached") for state in states) and in_flight < backend.capacity:
                    waiting.remove(step)
                    backend.submit(step)
                    in_flight += 1
            if in_flight:
                end(backend.next_outcome())
                in_flight -= 1
    finally:
        backend.close()
        bar.close()
    return outcomes
