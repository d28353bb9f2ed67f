"""Where every artefact lives, and atomic writes: a reader never sees a half-written file, an interrupted
write leaves the previous version in place."""

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch


class OutputError(RuntimeError):
    """The output folder cannot be written."""


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(handle)
    except OSError as error:
        raise OutputError(f"cannot write to {path.parent}: {error.strerror}; choose another --out") from None
    try:
        write(Path(temporary))
        os.replace(temporary, path)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise OutputError(f"cannot write {path}: {error.strerror}; earlier files are intact") from None
        raise


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    _write_atomic(path, lambda temporary: frame.to_csv(temporary, index=False))


def write_json(payload: dict[str, Any], path: Path) -> None:
    _write_atomic(
        path, lambda temporary: temporary.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    )


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def save_torch(payload: Any, path: Path) -> None:
    _write_atomic(path, lambda temporary: torch.save(payload, temporary))


@dataclass(frozen=True)
class RunPaths:
    """The files of one trained model, `OUT/runs/<run_id>/`, and of its probes, `.../<probe_id>/`."""

    root: Path
    probe_id: str

    @property
    def checkpoint(self) -> Path:  # the last finished epoch, for resuming
        return self.root / "checkpoint.pt"

    @property
    def model(self) -> Path:  # the final weights
        return self.root / "model.pt"

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
    def probe_record(self) -> Path:  # written last: probing is done
        return self.probe / "probe.json"


STUDY_TABLES = ("runs", "metrics", "mislabels", "curves", "flips")


def study_table(out: Path, name: str) -> Path:
    """OUT/<name>.csv, one of STUDY_TABLES."""
    if name not in STUDY_TABLES:
        raise ValueError(f"unknown table {name!r}; choose one of {', '.join(STUDY_TABLES)}")
    return out / f"{name}.csv"


def run_paths(out: Path, *, run_id: str, probe_id: str) -> RunPaths:
    return RunPaths(root=out / "runs" / run_id, probe_id=probe_id)
