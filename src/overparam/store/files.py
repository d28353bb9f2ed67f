"""Where every artefact lives, and atomic writes: a reader never sees a half-written file, an interrupted
write leaves the previous version in place. Checkpoints and weights also carry a SHA-256 of their bytes, so
a file damaged after it was written is detected instead of loaded."""

import errno
import fcntl
import hashlib
import io
import json
import os
import socket
import tempfile
import time
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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temporary_prefix(path: Path) -> str:
    """`.NAME.HOST.PID.`: whose temporary a file is, so `remove_stale_temporaries` knows when it is dead."""
    return f".{path.name}.{_host()}.{os.getpid()}."


def _host() -> str:
    return socket.gethostname().replace(".", "_")  # dot-free, so a temporary's name splits at its dots


def _fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable: without it a power cut can undo the rename after we report it."""
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(temporary)` with a temporary file beside `path`, flush it to disk, rename it to `path` and
    flush the folder; OutputError (one line, saying what to do) when the folder can't be written. The file
    gets the permissions of an ordinary new file (0666 less the umask), so a store shared by a group stays
    readable to it (mkstemp alone would make it 0600)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=_temporary_prefix(path), suffix=".tmp")
        os.close(handle)
    except OSError as error:
        raise OutputError(f"cannot write to {path.parent}: {error.strerror}; choose another --out") from None
    try:
        os.chmod(temporary, 0o666 & ~_umask())
        write(Path(temporary))
        with open(temporary, "rb+") as handle:  # on disk before the rename, so a crash never exposes a hole
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        _fsync_folder(path.parent)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError):
            hint = "free some space and run again" if error.errno == errno.ENOSPC else "check the folder"
            raise OutputError(
                f"cannot write {path}: {error.strerror}; {hint}, earlier results are intact"
            ) from None
        raise


_STALE_AFTER_SECONDS = 24 * 3600  # a temporary of another host is only presumed dead after a day


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporaries under `folder` (not following links) that `write_atomic` left when its process
    died (kill -9, power cut): those of this host whose process is gone, and those of other hosts older than
    a day. Returns what was deleted. A temporary of a live process is never touched."""
    removed, host, now = [], _host(), time.time()
    for parent, _, names in os.walk(folder):
        for name in names:
            if not (name.startswith(".") and name.endswith(".tmp")):
                continue
            path = Path(parent) / name
            owner = _temporary_owner(name)
            try:
                if owner is None or owner[0] != host:
                    stale = now - path.stat().st_mtime > _STALE_AFTER_SECONDS
                else:
                    stale = not _process_alive(owner[1])
                if stale:
                    path.unlink()
                    removed.append(path)
            except FileNotFoundError:  # its writer renamed or removed it meanwhile
                continue
    return removed


def _temporary_owner(name: str) -> tuple[str, int] | None:
    """(host, pid) from `.NAME.HOST.PID.RANDOM.tmp`, or None for a temporary of an older overparam."""
    parts = name[: -len(".tmp")].split(".")
    if len(parts) < 5 or not parts[-2].isdigit():
        return None
    return parts[-3], int(parts[-2])


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


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


def file_digest(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def file_record(paths: list[Path]) -> dict[str, Any]:
    """What a step's record (training.json, probe.json) lists to vouch for its outputs, hashed once as they
    are written: "files" maps each file name to its SHA-256, "bytes" to its size."""
    return {
        "files": {path.name: file_digest(path) for path in paths},
        "bytes": {path.name: path.stat().st_size for path in paths},
    }


def record_intact(record: Path, *, verify: bool = False) -> bool:
    """True when a step's record exists, parses, and every file it lists exists with its recorded size; with
    `verify`, also with its recorded SHA-256 (reads every byte: `overparam verify`). Readers check the digest
    of what they read (`read_verified`), so a cheap check here never lets damaged bytes into a table."""
    try:
        saved = read_json(record)
        listed, sizes = saved["files"], saved.get("bytes", {})
        for name, digest in listed.items():
            path = record.parent / name
            size = path.stat().st_size
            if name in sizes and size != sizes[name]:
                return False
            if verify and file_digest(path) != digest:
                return False
        return True
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def read_verified(record: Path, name: str) -> bytes:
    """The bytes of file `name` listed in step record `record`; CorruptFileError when they do not match the
    SHA-256 the record holds."""
    data = (record.parent / name).read_bytes()
    if hashlib.sha256(data).hexdigest() != read_json(record)["files"].get(name):
        raise CorruptFileError(f"{record.parent / name} does not match the digest in {record.name}")
    return data


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
        handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # less the umask, as for files
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
    def dynamics(self) -> Path:  # per epoch, each image's margin and prediction in its training batch
        return self.root / "dynamics.npz"

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

    def with_probe(self, probe_id: str) -> "RunPaths":  # the same run, another of its probes
        return RunPaths(root=self.root, probe_id=probe_id)

    def all_probes(self) -> list[Path]:  # the folders of every probe of this model, on any sigma grid
        return sorted(self.root.glob("probe-*"))

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
    def probe_parts(self) -> Path:  # predictions of finished chunks of levels while probing
        return self.probe / "parts"

    def probe_part(self, number: int) -> Path:
        return self.probe_parts / f"sigmas-{number:03d}.pt"

    @property
    def probe_record(self) -> Path:  # written last: probing is done
        return self.probe / "probe.json"


# A study's own tables; the steps experiments add write theirs beside them (`Step.tables`).
STUDY_TABLES = ("runs", "metrics", "mislabels", "curves", "flips")


def study_table(out: Path, name: str) -> Path:
    """OUT/<name>.csv: one of STUDY_TABLES, or a table that a step adds (`Step.tables`)."""
    if not name.isidentifier():
        raise ValueError(f"a study table is named by an identifier, not {name!r}")
    return out / f"{name}.csv"


def run_paths(store: Path, *, run_id: str, probe_id: str) -> RunPaths:
    """The folder of one run in a run store (see `resolve_store`)."""
    return RunPaths(root=store / run_id, probe_id=probe_id)


def resolve_store(store: str | Path | None) -> Path:
    """The run store: `store`, else $OVERPARAM_STORE, else runs/store. Studies that share it share runs."""
    return Path(store or os.environ.get("OVERPARAM_STORE") or Path("runs") / "store")
