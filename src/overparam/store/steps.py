"""Steps: the results of the run store. A step is a frozen dataclass of its settings, the steps it `needs`
and a `compute` that writes its artefacts into its folder; this module does the rest for every kind of step
alike: identity, lock, cache, resume, damage and staleness checks, the record written last, failures.

Identity. A step's `step_id` is its folder relative to the store and a hash of its settings and of the ids
of the steps it needs (`content_id`). The study's two kinds keep the ids they had before steps existed: a
training is `<run_id>` (a hash of its settings; it needs nothing) and a probe `<run_id>/probe-<hash>`, the
hash of its settings inside the folder of the training it needs.

Validity. A step's record (its `record_name`, written last) lists its files with their sizes and SHA-256, and
the digest of the record of every step it needed at the time. It counts as finished while its files match
their sizes (their bytes are checked as they are read, and by `overparam verify`) and each of its inputs
still has the record it was made from: a training done again makes every step built on it stale.
"""

import hashlib
import json
import logging
import os
import socket
import traceback
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import torch

from overparam.runtime import environment, make_deterministic, select_device
from overparam.store.files import (
    exclusive_lock,
    file_digest,
    read_json,
    record_intact,
    remove_stale_temporaries,
    write_json,
)

log = logging.getLogger(__name__)


class MissingInputError(RuntimeError):
    """A step was asked for before the steps it needs were finished."""


@dataclass(frozen=True)
class RunOptions:
    """Where and how to compute steps: nothing here changes a result."""

    store: str
    data_dir: str | None = None
    download: bool = True
    device: str = "auto"
    progress: bool = False
    threads: int | None = None  # CPU threads per step; None keeps PyTorch's default


@dataclass(frozen=True)
class StepContext:
    """What `Step.compute` gets: the store, the step's own folder, the device and the options."""

    store: Path
    folder: Path
    device: torch.device
    options: RunOptions


class Step(ABC):
    """One result in the run store; subclasses are frozen dataclasses registered by their `kind`."""

    kind: ClassVar[str]
    record_name: ClassVar[str] = "step.json"  # written last: the step is done
    lock_name: ClassVar[str] = "step.lock"  # held while a process computes the step
    tables: ClassVar[dict[str, str]] = {}  # the study tables it adds to: table name -> its file
    kinds: ClassVar[dict[str, type["Step"]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            Step.kinds[cls.kind] = cls

    @abstractmethod
    def step_id(self) -> str:
        """The step's folder relative to the store, which identifies it (see the module's docstring)."""

    def needs(self) -> tuple["Step", ...]:
        """The steps whose artefacts this one reads."""
        return ()

    @abstractmethod
    def compute(self, context: StepContext) -> dict[str, Any]:
        """Write the step's artefacts into `context.folder` and return its record: "files" and "bytes" as
        `file_record` gives them for what it vouches for, and anything else worth keeping."""

    def tidy(self, folder: Path) -> None:
        """Remove what only resuming needed (checkpoints, partial results), once the record is written."""
        return None

    @classmethod
    def legacy_inputs_current(cls, record: Path) -> bool:
        """Whether a record written before records named their inputs was made from the inputs there now."""
        return True

    def folder(self, store: Path) -> Path:
        return store / self.step_id()

    def record(self, store: Path) -> Path:
        return self.folder(store) / self.record_name

    def lock(self, store: Path) -> Path:
        return self.folder(store) / self.lock_name

    def failure(self, store: Path) -> Path:  # the error of the last failed attempt; removed on success
        return self.folder(store) / "failed.json"


def content_id(kind: str, settings: dict[str, Any], needs: Sequence[Step] = ()) -> str:
    """`<kind>-<12 hex digits>`: a hash of the settings (JSON-able, each as its declared type) and of the ids
    of the steps needed, for step kinds that have no older id to keep."""
    payload = {"kind": kind, "settings": settings, "needs": [step.step_id() for step in needs]}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
    return f"{kind}-{digest[:12]}"


@dataclass(frozen=True)
class Outcome:
    step_id: str
    status: str  # "done" (computed now), "cached", "busy" (another process holds it) or "failed"
    error: str | None = None


def _kind_of(record: Path) -> type[Step] | None:
    saved = read_json(record).get("step", {}).get("kind")
    if saved in Step.kinds:
        return Step.kinds[saved]
    return next((kind for kind in Step.kinds.values() if kind.record_name == record.name), None)


def inputs_current(record: Path, store: Path) -> bool:
    """Whether every step that the step of `record` was made from still has the record it had then."""
    try:
        needs = read_json(record).get("step", {}).get("needs")
        if needs is None:
            kind = _kind_of(record)
            return kind is None or kind.legacy_inputs_current(record)
        return all(file_digest(store / need["record"]) == need["sha256"] for need in needs.values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def step_finished(step: Step, store: Path) -> bool:
    """The step's record is there, its files at their recorded sizes, its inputs those it was made from and
    themselves finished. Cheap: no artefact is hashed, only the small records of the inputs (readers check
    what they read; `overparam verify` checks every byte)."""
    record = step.record(store)
    return (
        record_intact(record)
        and inputs_current(record, store)
        and all(step_finished(need, store) for need in step.needs())
    )


def discard_stale(record: Path, store: Path, *, verify: bool = False) -> str | None:
    """Remove a record whose files no longer match it (missing, resized; with `verify`, any byte changed) or
    whose inputs changed, so that its step is computed again; returns why, or None when it stands."""
    if not record.exists():
        return None
    where = record.parent.relative_to(store)
    if not record_intact(record, verify=verify):
        why = f"{where}: files do not match their record"
    elif not inputs_current(record, store):
        why = f"{where} was made from inputs that have changed since"
    else:
        return None
    record.unlink()
    log.warning("%s; computed again when next asked for", why)
    return why


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def compute_locked(step: Step, options: RunOptions) -> bool:
    """Compute `step` unless finished, its lock already held; errors propagate. True when computed now."""
    store = Path(options.store)
    folder = step.folder(store)
    for stale in remove_stale_temporaries(folder) if folder.exists() else ():
        log.info("removed %s, left by a process that died while writing it", stale)
    discard_stale(step.record(store), store)
    if step_finished(step, store):
        return False
    missing = [need.step_id() for need in step.needs() if not step_finished(need, store)]
    if missing:
        raise MissingInputError(f"{step.step_id()} needs {', '.join(missing)} first")
    needs = {
        need.step_id(): {
            "record": str(need.record(store).relative_to(store)),
            "sha256": file_digest(need.record(store)),
        }
        for need in step.needs()
    }
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    device = select_device(options.device)
    make_deterministic()
    record = step.compute(StepContext(store=store, folder=folder, device=device, options=options))
    stamp = {"kind": step.kind, "id": step.step_id(), "needs": needs}
    record = {"step": stamp, **record}
    record.setdefault("environment", environment(device))
    record.setdefault("finished", datetime.now(UTC).isoformat(timespec="seconds"))
    write_json(record, step.record(store))
    step.tidy(folder)
    return True


def compute_step(step: Step, options: RunOptions) -> None:
    """Compute `step` under its lock (waiting for a process that holds it); errors propagate."""
    with exclusive_lock(step.lock(Path(options.store)), wait=True, owner=_owner()):
        compute_locked(step, options)


def execute_step(step: Step, options: RunOptions, *, wait: bool = True) -> Outcome:
    """Compute `step` unless finished: what every executor calls. With `wait`, a step another process holds
    is waited for; without, it is reported "busy". A failure is recorded in the step's folder (failed.json)
    and returned, never raised, so that one bad step cannot stop the others."""
    store = Path(options.store)
    if step_finished(step, store):
        log.info("cached  %s", step.step_id())
        return Outcome(step.step_id(), "cached")
    with exclusive_lock(step.lock(store), wait=wait, owner=_owner()) as held:
        if not held:
            return Outcome(step.step_id(), "busy")
        try:
            computed = compute_locked(step, options)
        except Exception as error:
            message = f"{type(error).__name__}: {error}"
            log.error("failed  %s: %s", step.step_id(), message)
            record_failure(step, store, message, traceback.format_exc())
            return Outcome(step.step_id(), "failed", message)
        step.failure(store).unlink(missing_ok=True)
        if not computed:
            log.info("cached  %s", step.step_id())
        return Outcome(step.step_id(), "done" if computed else "cached")


def record_failure(step: Step, store: Path, message: str, details: str) -> None:
    try:
        record = {"error": message, "traceback": details, "host": socket.gethostname()}
        write_json({**record, "time": datetime.now(UTC).isoformat(timespec="seconds")}, step.failure(store))
    except Exception:  # the store itself may be what failed: the log still says so
        log.exception("could not record the failure of %s", step.step_id())


def record_death(step: Step, options: RunOptions, message: str) -> None:
    """failed.json for a step whose worker died, under its lock (the kernel released the dead one's)."""
    store = Path(options.store)
    with exclusive_lock(step.lock(store), wait=False, owner=_owner()) as held:
        if held:
            record_failure(step, store, message, "")


def step_status(step: Step, store: Path) -> tuple[str, str | None]:
    """("done" | "running" | "failed" | "pending", the recorded error of a failed step)."""
    if step_finished(step, store):
        return "done", None
    lock = step.lock(store)
    if lock.exists():
        with exclusive_lock(lock, wait=False) as held:
            if not held:
                return "running", None
    if step.failure(store).exists():
        return "failed", read_json(step.failure(store))["error"]
    return "pending", None


def with_needs(steps: Sequence[Step]) -> list[Step]:
    """`steps` and every step they need, directly or not, each once, each after what it needs."""
    ordered: dict[str, Step] = {}

    def visit(step: Step, path: tuple[str, ...]) -> None:
        if step.step_id() in path:
            raise ValueError(f"steps depend on each other in a cycle: {' -> '.join(path)}")
        for need in step.needs():
            visit(need, (*path, step.step_id()))
        ordered.setdefault(step.step_id(), step)

    for step in steps:
        visit(step, ())
    return list(ordered.values())


def _records(store: Path) -> Iterator[tuple[Path, Path]]:
    """(record, lock) of every step in `store`, shallower steps (what deeper ones need) first."""
    locks = {kind.record_name: kind.lock_name for kind in Step.kinds.values()}
    found = [path for name in locks for path in store.rglob(name) if path.is_file()]
    for record in sorted(found, key=lambda path: (len(path.relative_to(store).parts), str(path))):
        yield record, record.parent / locks[record.name]


def verify_store(store: Path) -> tuple[int, list[str]]:
    """`overparam verify`: check every byte of every finished step in `store` against its record, each under
    its lock, and discard a damaged step, or one made from inputs that changed, so that the next study
    computes it again. Returns the number of steps checked and one line per discarded step."""
    checked, discarded = 0, []
    for record, lock in _records(store):
        with exclusive_lock(lock, wait=True, owner=_owner()):
            why = discard_stale(record, store, verify=True)
        discarded += [why] if why else []
        checked += 1
    while True:  # then what was built on a discarded step, and on that, ...
        found = []
        for record, lock in _records(store):
            with exclusive_lock(lock, wait=True, owner=_owner()):
                found += [why] if (why := discard_stale(record, store)) else []
        if not found:
            return checked, discarded
        discarded += found
