"""Tests for overparam.data against the real MNIST / Fashion-MNIST files."""

import functools
import gzip
import shutil
import stat
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torchvision.datasets.utils
from torchvision.datasets import MNIST, FashionMNIST

from overparam.data import (
    _GZ_MD5,
    DATASETS,
    NORMALIZATION,
    DataUnavailableError,
    _parse_idx,
    default_data_dir,
    load_split,
    resolve_data_dir,
)

TEST_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
Loader = Callable[[str, str], tuple[torch.Tensor, torch.Tensor]]


@pytest.fixture(scope="session")
def load(data_root: Path) -> Loader:
    """Load a split from the real data once per session."""

    @functools.cache
    def _load(dataset: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        return load_split(dataset=dataset, split=split, data_dir=data_root, download=False)

    return _load


@pytest.fixture
def mnist_test_copy(data_root: Path, tmp_path: Path) -> Path:
    """A data folder in tmp_path holding copies of the MNIST test-split .gz files."""
    raw = tmp_path / "copy" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in TEST_FILES:
        shutil.copy(data_root / "MNIST" / "raw" / f"{name}.gz", raw)
    return tmp_path / "copy"


@pytest.fixture
def file_mirror(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[[str, bool], str]:
    """``make(name, corrupt)`` -> file:// URL of a new tmp folder holding the MNIST test .gz files."""

    # torchvision's _urlretrieve reads `response.length`, which file:// responses lack.
    def urlretrieve(url: str, filename: str | Path) -> None:
        with urllib.request.urlopen(url) as response, open(filename, "wb") as out:
            shutil.copyfileobj(response, out)

    monkeypatch.setattr(torchvision.datasets.utils, "_urlretrieve", urlretrieve)

    def make(name: str, corrupt: bool) -> str:
        folder = tmp_path / "mirrors" / name
        folder.mkdir(parents=True)
        for file in TEST_FILES:
            data = bytearray((data_root / "MNIST" / "raw" / f"{file}.gz").read_bytes())
            if corrupt:
                data[-1] ^= 0xFF
            (folder / f"{file}.gz").write_bytes(data)
        return folder.as_uri() + "/"

    return make


def _tree_state(root: Path) -> dict[str, tuple[int, int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_mode)
        for p in root.rglob("*")
    }


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("split", ["train", "test"])
def test_split_shapes_dtypes_and_labels(load: Loader, dataset: str, split: str) -> None:
    images, labels = load(dataset, split)
    n = 60000 if split == "train" else 10000
    assert images.shape == (n, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (n,) and labels.dtype == torch.int64
    assert images.is_contiguous() and labels.is_contiguous()
    assert images.device.type == labels.device.type == "cpu"
    assert int(labels.min()) == 0 and int(labels.max()) == 9
    counts = torch.bincount(labels, minlength=10)
    assert counts.shape == (10,) and int(counts.sum()) == n
    assert int(images.max()) == 255 and int(images.min()) == 0
    if dataset == "fashion-mnist":
        assert counts.tolist() == [n // 10] * 10


def test_mnist_first_train_labels(load: Loader) -> None:
    _, labels = load("mnist", "train")
    assert labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]


@pytest.mark.parametrize("dataset", DATASETS)
def test_normalization_matches_training_split(load: Loader, dataset: str) -> None:
    pixels = load(dataset, "train")[0].double() / 255
    mean, std = NORMALIZATION[dataset]
    assert abs(pixels.mean().item() - mean) < 1e-4
    assert abs(pixels.std().item() - std) < 1e-4


def test_unknown_dataset_or_split(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mnist, fashion-mnist"):
        load_split(dataset="cifar10", split="train", data_dir=tmp_path)
    with pytest.raises(ValueError, match="train, test"):
        load_split(dataset="mnist", split="val", data_dir=tmp_path)


def test_read_only_folder_is_not_written(load: Loader, mnist_test_copy: Path) -> None:
    paths = [mnist_test_copy, *mnist_test_copy.rglob("*")]
    for path in paths:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    before = _tree_state(mnist_test_copy)
    try:
        images, labels = load_split(dataset="mnist", split="test", data_dir=mnist_test_copy)
        assert _tree_state(mnist_test_copy) == before
    finally:
        for path in paths:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)
    ref_images, ref_labels = load("mnist", "test")
    assert torch.equal(images, ref_images) and torch.equal(labels, ref_labels)


@pytest.mark.parametrize("dataset", DATASETS)
def test_uncompressed_files_load_identically(
    load: Loader, data_root: Path, tmp_path: Path, dataset: str
) -> None:
    folder = "MNIST" if dataset == "mnist" else "FashionMNIST"
    raw = tmp_path / folder / "raw"
    raw.mkdir(parents=True)
    for name in TEST_FILES:
        (raw / name).write_bytes(gzip.decompress((data_root / folder / "raw" / f"{name}.gz").read_bytes()))
    images, labels = load_split(dataset=dataset, split="test", data_dir=tmp_path, download=False)
    ref_images, ref_labels = load(dataset, "test")
    assert torch.equal(images, ref_images) and torch.equal(labels, ref_labels)


@pytest.mark.parametrize("compressed", [True, False])
def test_corrupted_file_is_reported_not_deleted(mnist_test_copy: Path, compressed: bool) -> None:
    raw = mnist_test_copy / "MNIST" / "raw"
    bad = raw / "t10k-labels-idx1-ubyte.gz"
    if not compressed:
        bad.with_suffix("").write_bytes(gzip.decompress(bad.read_bytes()))
        bad.unlink()
        bad = bad.with_suffix("")
    data = bytearray(bad.read_bytes())
    data[100] ^= 0x01
    bad.write_bytes(data)
    with pytest.raises(DataUnavailableError) as info:
        load_split(dataset="mnist", split="test", data_dir=mnist_test_copy)
    message = str(info.value)
    expected_md5 = "ec29112dd5afa0611ce80d1b7f02629c" if compressed else "27ae3e4e09519cfbb04c329615203637"
    assert str(bad) in message and "MD5" in message and expected_md5 in message
    assert "Delete it" in message
    assert bad.read_bytes() == data


def test_missing_files_without_download(tmp_path: Path) -> None:
    with pytest.raises(DataUnavailableError) as info:
        load_split(dataset="fashion-mnist", split="train", data_dir=tmp_path, download=False)
    message = str(info.value)
    assert str(tmp_path / "FashionMNIST" / "raw") in message
    assert "train-images-idx3-ubyte" in message and "train-labels-idx1-ubyte" in message
    assert "OVERPARAM_DATA" in message and "--data-dir" in message
    assert "\n" not in message
    assert not any(tmp_path.iterdir())


def test_download_fetches_missing_files(
    load: Loader, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, file_mirror: Callable[[str, bool], str]
) -> None:
    monkeypatch.setattr(MNIST, "mirrors", [file_mirror("good", False)])
    data_dir = tmp_path / "cache"
    images, labels = load_split(dataset="mnist", split="test", data_dir=data_dir)
    assert sorted(p.name for p in (data_dir / "MNIST" / "raw").iterdir()) == [f"{n}.gz" for n in TEST_FILES]
    ref_images, ref_labels = load("mnist", "test")
    assert torch.equal(images, ref_images) and torch.equal(labels, ref_labels)


def test_download_skips_corrupt_mirror(
    load: Loader, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, file_mirror: Callable[[str, bool], str]
) -> None:
    monkeypatch.setattr(MNIST, "mirrors", [file_mirror("bad", True), file_mirror("good", False)])
    data_dir = tmp_path / "cache"
    images, labels = load_split(dataset="mnist", split="test", data_dir=data_dir)
    assert sorted(p.name for p in (data_dir / "MNIST" / "raw").iterdir()) == [f"{n}.gz" for n in TEST_FILES]
    ref_images, ref_labels = load("mnist", "test")
    assert torch.equal(images, ref_images) and torch.equal(labels, ref_labels)


def test_download_fails_when_every_mirror_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, file_mirror: Callable[[str, bool], str]
) -> None:
    absent = (tmp_path / "absent").as_uri() + "/"
    monkeypatch.setattr(MNIST, "mirrors", [file_mirror("bad", True), absent])
    data_dir = tmp_path / "cache"
    with pytest.raises(DataUnavailableError) as info:
        load_split(dataset="mnist", split="test", data_dir=data_dir)
    message = str(info.value)
    assert "every mirror" in message and absent in message and "OVERPARAM_DATA" in message
    assert "\n" not in message
    assert not any((data_dir / "MNIST" / "raw").iterdir())


def test_download_into_unwritable_target(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(DataUnavailableError, match="cannot create folder"):
        load_split(dataset="mnist", split="test", data_dir=blocker / "data")
    assert blocker.read_text() == "not a folder"


def test_parse_idx_rejects_bad_header_and_length() -> None:
    good = bytes((0, 0, 8, 1)) + (3).to_bytes(4, "big") + bytes((1, 2, 3))
    assert _parse_idx(good, shape=(3,), path=Path("x")).tolist() == [1, 2, 3]
    for bad in (good[:-1], good + b"\0", bytes((0, 0, 9, 1)) + good[4:], good[:6]):
        with pytest.raises(DataUnavailableError, match="not an IDX file"):
            _parse_idx(bad, shape=(3,), path=Path("x"))
    two_by_three = bytes((0, 0, 8, 2)) + (2).to_bytes(4, "big") + (3).to_bytes(4, "big") + bytes(6)
    assert _parse_idx(two_by_three, shape=(2, 3), path=Path("x")).shape == (2, 3)
    with pytest.raises(DataUnavailableError):
        _parse_idx(two_by_three, shape=(3, 2), path=Path("x"))


def test_resolve_data_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OVERPARAM_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_dir(str(tmp_path / "arg")) == tmp_path / "arg"
    assert resolve_data_dir(None) == tmp_path / "env"
    monkeypatch.delenv("OVERPARAM_DATA")
    assert resolve_data_dir(None) == default_data_dir() == tmp_path / "xdg" / "overparam" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_data_dir(None) == tmp_path / "home" / ".cache" / "overparam" / "data"


def test_gz_checksums_are_torchvisions() -> None:
    published = {"mnist": dict(MNIST.resources), "fashion-mnist": dict(FashionMNIST.resources)}
    assert published == _GZ_MD5
