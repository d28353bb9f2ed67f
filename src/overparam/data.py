"""MNIST and Fashion-MNIST as uint8 tensors, read from a torchvision-style folder.

Files live in ``<data_dir>/<MNIST|FashionMNIST>/raw/`` as the original IDX files, gzipped or not. Every
file is checked by MD5 before use. Missing files are downloaded from torchvision's mirrors if allowed;
otherwise nothing is ever written, so the folder may be read-only.
"""

import gzip
import hashlib
import http.client
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from torchvision.datasets import MNIST

DATASETS: tuple[str, ...] = ("mnist", "fashion-mnist")

NORMALIZATION: dict[str, tuple[float, float]] = {
    "mnist": (0.1307, 0.3081),
    "fashion-mnist": (0.2860, 0.3530),
}
"""Mean and std of the training split's pixels scaled to [0, 1], per dataset."""

_SPLITS = ("train", "test")
_FILE_PREFIX = {"train": "train", "test": "t10k"}
_SPLIT_SIZE = {"train": 60000, "test": 10000}
_IMAGE_SIDE = 28
# torchvision's dataset class of each (_source), whose name is also its folder's.
_FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}

# torchvision's MD5s of the .gz files (its classes' `resources`; tests/test_data.py checks they match),
# written out so that reading the files never imports torchvision, about a second.
_GZ_MD5 = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
}
# torchvision publishes MD5s of the .gz files only; these are of the same files uncompressed.
_UNCOMPRESSED_MD5 = {
    "mnist": {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
}


class DataUnavailableError(RuntimeError):
    """A dataset file is missing, corrupted or cannot be downloaded; the message says what to do."""


def _source(dataset: str) -> "type[MNIST]":
    """torchvision's class of `dataset` (its download mirrors and .gz MD5s), imported only to download:
    importing torchvision takes about a second, which `overparam --help` should not wait for."""
    from torchvision import datasets

    return getattr(datasets, _FOLDERS[dataset])


def default_data_dir() -> Path:
    """Per-user cache folder: ``$XDG_CACHE_HOME/overparam/data``, else ``~/.cache/overparam/data``."""
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "overparam" / "data"


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    """The data folder to use: ``data_dir`` if given, else ``$OVERPARAM_DATA``, else the default cache."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    if env := os.environ.get("OVERPARAM_DATA"):
        return Path(env).expanduser()
    return default_data_dir()


def load_split(
    *, dataset: str, split: str, data_dir: Path, download: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one split of a dataset from ``data_dir``, downloading missing files if ``download``.

    Returns images, uint8 [N, 28, 28] with pixel values 0..255, and labels, int64 [N] with classes
    0..9, both contiguous CPU tensors; N is 60000 for ``split="train"`` and 10000 for ``"test"``.
    Raises ValueError for an unknown dataset or split, and DataUnavailableError for a file that is
    missing and cannot be downloaded or that fails its MD5 check.
    """
    _check_choice("dataset", dataset, DATASETS)
    _check_choice("split", split, _SPLITS)
    raw_dir = data_dir / _FOLDERS[dataset] / "raw"
    prefix = _FILE_PREFIX[split]
    names = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")

    missing = [name for name in names if _locate(raw_dir, name) is None]
    if missing and not download:
        raise DataUnavailableError(_missing_message(raw_dir, missing, "download disabled"))
    if missing:
        _download(_source(dataset), raw_dir, missing)

    n = _SPLIT_SIZE[split]
    images = _read(_locate(raw_dir, names[0]), dataset=dataset, shape=(n, _IMAGE_SIDE, _IMAGE_SIDE))
    labels = _read(_locate(raw_dir, names[1]), dataset=dataset, shape=(n,))
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))


def _check_choice(kind: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {kind} {value!r}; choose one of: {', '.join(choices)}")


def _locate(raw_dir: Path, name: str) -> Path | None:
    """The uncompressed file if present (faster to read), else the ``.gz`` one, else None."""
    for path in (raw_dir / name, raw_dir / f"{name}.gz"):
        if path.is_file():
            return path
    return None


def _missing_message(raw_dir: Path, names: list[str], reason: str) -> str:
    files = ", ".join(f"{name}[.gz]" for name in names)
    return (
        f"Dataset files not found in {raw_dir}: {files} ({reason}). Set --data-dir or the OVERPARAM_DATA "
        f"environment variable to a folder containing {raw_dir.parent.name}/raw/ with these files, "
        "or allow download."
    )


def _download(source: "type[MNIST]", raw_dir: Path, names: list[str]) -> None:
    """Fetch ``<name>.gz`` for each name into ``raw_dir``, trying torchvision's mirrors in turn."""
    from torchvision.datasets.utils import download_url

    try:
        raw_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataUnavailableError(_missing_message(raw_dir, names, f"cannot create folder: {err}")) from err
    gz_md5 = dict(source.resources)
    for name in names:
        gz_name = f"{name}.gz"
        # Download under a temporary name so an interrupted download never looks like a real file.
        part = raw_dir / f"{gz_name}.part"
        errors = []
        for mirror in source.mirrors:
            try:
                download_url(f"{mirror}{gz_name}", root=raw_dir, filename=part.name, md5=gz_md5[gz_name])
            except (OSError, RuntimeError, http.client.HTTPException) as err:
                part.unlink(missing_ok=True)
                errors.append(f"{mirror}: {' '.join(str(err).split())}")
                continue
            part.replace(raw_dir / gz_name)
            break
        else:
            reason = f"download failed from every mirror: {'; '.join(errors)}"
            raise DataUnavailableError(_missing_message(raw_dir, [name], reason))


def _read(path: Path, *, dataset: str, shape: tuple[int, ...]) -> np.ndarray:
    """Verify ``path`` by MD5, then parse it (gunzipping a ``.gz``) into a uint8 array of ``shape``."""
    data = path.read_bytes()
    expected = (_GZ_MD5 if path.suffix == ".gz" else _UNCOMPRESSED_MD5)[dataset][path.name]
    actual = hashlib.md5(data).hexdigest()
    if actual != expected:
        raise DataUnavailableError(
            f"{path} has MD5 {actual}, expected {expected}: the file is corrupted or incomplete. "
            "Delete it to re-download it."
        )
    return _parse_idx(gzip.decompress(data) if path.suffix == ".gz" else data, shape=shape, path=path)


def _parse_idx(data: bytes, *, shape: tuple[int, ...], path: Path) -> np.ndarray:
    """Parse the bytes of an IDX file of uint8 values into a writable array, checking it has ``shape``."""
    header = 4 + 4 * len(shape)
    # Magic number: two zero bytes, type code 0x08 (uint8), number of dimensions.
    magic = bytes((0, 0, 0x08, len(shape)))
    dims = tuple(int(d) for d in np.frombuffer(data[4:header], dtype=">u4")) if len(data) >= header else ()
    if data[:4] != magic or dims != shape or len(data) != header + math.prod(shape):
        raise DataUnavailableError(f"{path} is not an IDX file of uint8 values with shape {shape}")
    # Copy: a view of `bytes` is read-only, which torch.from_numpy warns about.
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy()
