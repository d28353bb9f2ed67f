"""Same seed, same results on a CUDA GPU: a whole (smoke-sized) study made twice in fresh stores gives the
same tables, in fp32 and in bf16. Skipped where no GPU is present (CI); benchmarks/gpu_session.sh runs it."""

import os
from pathlib import Path

import pandas as pd
import pytest
import torch

from overparam.cli import main

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def mnist_root() -> Path:
    """A folder holding MNIST/raw/ (the GPU machine gets MNIST alone): $OVERPARAM_DATA or ../shared/data."""
    root = Path(os.environ.get("OVERPARAM_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
    if not (root / "MNIST" / "raw").is_dir():
        pytest.skip(f"no MNIST files under {root}")
    return root


SMALL = ["--preset", "smoke", "--rates", "0", "0.1", "--no-report", "--device", "cuda"]


def study_tables(mnist_root: Path, folder: Path, *flags: str) -> dict[str, pd.DataFrame]:
    """runs, metrics, curves and flips of a smoke study made from nothing in `folder`, without timings."""
    placement = [
        "--data-dir",
        str(mnist_root),
        "--store",
        str(folder / "store"),
        "--out",
        str(folder / "out"),
    ]
    assert main(["reproduce", *SMALL, *placement, *flags]) == 0
    names = ("runs", "metrics", "curves", "flips")
    tables = {name: pd.read_csv(folder / "out" / f"{name}.csv") for name in names}
    tables["runs"] = tables["runs"].drop(columns=["train_seconds"])
    tables["metrics"] = tables["metrics"].drop(columns=["seconds"])
    return tables


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_study_on_cuda_is_the_same_twice(mnist_root: Path, tmp_path: Path, precision: str) -> None:
    first = study_tables(mnist_root, tmp_path / "first", "--precision", precision)
    second = study_tables(mnist_root, tmp_path / "second", "--precision", precision)
    for name, table in first.items():
        pd.testing.assert_frame_equal(table, second[name], check_exact=True, obj=name)
    assert first["flips"]["flip_level"].notna().any()  # the probe changed some predictions: not vacuous
