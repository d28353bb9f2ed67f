"""Where every artefact lives, and atomic writes: a reader never sees a half-written file, an interrupted
write leaves the previous version in place. Checkpoints and weights also carry a SHA-256 of their bytes, so
a file damaged after it was written is detected instead of loaded."""

import errno
import fcntl
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch


class OutputError(RuntimeError):
    """The output folder cannot be written."""


class CorruptFileError(RuntimeError):
    """A checksummed file does not match its checksum (truncated, damaged or not ours)."""


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(temporary)` with a temporary file beside `path`, flush it to disk, then rename it to
    `path`; OutputError (one line, saying what to do) when the folder can't be written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(handle)
    except OSError as error:
        raise OutputError(f"cannot write to {path.parent}: {error.strerror}; choose another --out") from None
    try:
        write(Path(temporary))
        with open(temporary, "rb+") as handle:  # on disk before the rename, so a crash never exposes a hole
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError):
            hint = "free some space and run again" if error.errno == errno.ENOSPC else "check the folder"
            raise OutputError(
                f"cannot write {path}: {error.strerror}; {hint}, earlier results are intact"
            ) from None
        raise


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    write_atomic(path, lambda temporary: frame.to_csv(temporary, index=False))


def write_text(text: str, path: Path) -> None:
    write_atomic(path, lambda temporary: temporary.write_text(text))


def write_json(payload: dict[str, Any], path: Path) -> None:
    write_atomic(
        path, lambda temporary: temporary.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    )


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    """Compressed NumPy arrays, atomically."""

    def write(temporary: Path) -> None:
        with open(temporary, "wb") as handle:  # a handle keeps NumPy from appending ".npz" to the name
            np.savez_compressed(handle, **arrays)

    write_atomic(path, write)


def with_keys(keys: dict[str, Any], frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with a run's key columns (`RunConfig.keys()`) first."""
    return frame.assign(**keys)[[*keys, *frame.columns]]


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def digests(paths: list[Path]) -> dict[str, str]:
    """SHA-256 of each file, by file name: what a step's record lists to vouch for its outputs."""
    found = {}
    for path in paths:
        with open(path, "rb") as handle:
            found[path.name] = hashlib.file_digest(handle, "sha256").hexdigest()
    return found


def record_intact(record: Path) -> bool:
    """True when a step's record (training.json, probe.json) exists, parses, and every file it lists in
    "files" still has the digest it had when the step finished."""
    try:
        listed = read_json(record)["files"]
        return digests([record.parent / name for name in listed]) == listed
    except (OSError, ValueError, KeyError, TypeError):
        return False


_CHECKSUM_BYTES = 64  # hex SHA-256, then a newline, then torch.save's bytes


def save_checked(payload: Any, path: Path) -> None:
    """torch.save `payload` to `path` atomically, prefixed by the SHA-256 of the saved bytes."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    header = hashlib.sha256(data).hexdigest().encode() + b"\n"
    write_atomic(path, lambda temporary: temporary.write_bytes(header + data))


def load_checked(path: Path, *, map_location: str | torch.device = "cpu", weights_only: bool = True) -> Any:
    """The payload of a `save_checked` file; CorruptFileError when its bytes don't match the checksum."""
    raw = path.read_bytes()
    checksum, data = raw[:_CHECKSUM_BYTES], raw[_CHECKSUM_BYTES + 1 :]
    if len(raw) <= _CHECKSUM_BYTES or hashlib.sha256(data).hexdigest().encode() != checksum:
        raise CorruptFileError(f"{path} does not match its checksum (truncated or damaged)")
    return torch.load(io.BytesIO(data), map_location=map_location, weights_only=weights_only)


@contextmanager
def exclusive_lock(path: Path, *, wait: bool, owner: str = "") -> Iterator[bool]:
    """Hold an exclusive lock on `path` for the block; yields False at once when another process holds it
    and `wait` is False. The kernel drops the lock when its process dies, even by kill -9, so a crash never
    leaves a stale lock behind; `owner` is written into the file for people reading it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise OutputError(f"cannot create lock {path}: {error.strerror}; check the folder") from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        if owner:
            os.ftruncate(handle, 0)
            os.pwrite(handle, owner.encode() + b"\n", 0)
        yield True
    finally:
        os.close(handle)  # closing releases the lock


@dataclass(frozen=True)
class RunPaths:
    """The files of one trained model, `OUT/runs/<run_id>/`, and of its probes, `.../<probe_id>/`."""

    root: Path
    probe_id: str

    @property
    def lock(self) -> Path:  # held while a process works on this run
        return self.root / "run.lock"

    @property
    def failure(self) -> Path:  # the error of the last failed attempt; removed when the run succeeds
        return self.root / "failed.json"

    @property
    def checkpoint(self) -> Path:  # the last finished epoch, for resuming
        return self.root / "checkpoint.pt"

    @property
    def model(self) -> Path:  # the final weights
        return self.root / "model.pt"

    @property
    def final_predictions(self) -> Path:  # eval-mode predictions of the unblurred images after training
        return self.root / "final_predictions.npz"

    @property
    def training(self) -> Path:  # run settings, environment and results; written last: training is done
        return self.root / "training.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.csv"

    @property
    def mislabels(self) -> Path:
        return self.root / "mislabels.csv"

    @property
    def probe(self) -> Path:
        return self.root / self.probe_id

    @property
    def predictions(self) -> Path:  # every prediction, [sigma, image], compressed NumPy arrays
        return self.probe / "predictions.npz"

    @property
    def curves(self) -> Path:
        return self.probe / "curves.csv"

    @property
    def flips(self) -> Path:
        return self.probe / "flips.csv"

    @property
    def probe_parts(self) -> Path:  # predictions of finished sigma chunks while probing
        return self.probe / "parts"

    def probe_part(self, number: int) -> Path:
        return self.probe_parts / f"sigmas-{number:03d}.pt"

    @property
    def probe_record(self) -> Path:  # written last: probing is done
        return self.probe / "probe.json"


STUDY_TABLES = ("runs", "metrics", "mislabels", "curves", "flips")


def study_table(out: Path, name: str) -> Path:
    """OUT/<name>.csv, one of STUDY_TABLES."""
    if name not in STUDY_TABLES:
        raise ValueError(f"unknown table {name!r}; choose one of {', '.join(STUDY_TABLES)}")
    return out / f"{name}.csv"


def run_paths(store: Path, *, run_id: str, probe_id: str) -> RunPaths:
    """The folder of one run in a run store (see `resolve_store`)."""
    return RunPaths(root=store / run_id, probe_id=probe_id)


def resolve_store(store: str | Path | None) -> Path:
    """The run store: `store`, else $OVERPARAM_STORE, else runs/store. Studies that share it share runs."""
    return Path(store or os.environ.get("OVERPARAM_STORE") or Path("runs") / "store")
