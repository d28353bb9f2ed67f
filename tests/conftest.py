import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real MNIST / Fashion-MNIST folder: $OVERPARAM_DATA, else ../shared/data beside the repo."""
    root = Path(os.environ.get("OVERPARAM_DATA") or SHARED_DATA)
    if not all((root / folder / "raw").is_dir() for folder in ("MNIST", "FashionMNIST")):
        pytest.skip(
            f"no MNIST / Fashion-MNIST files under {root}; set OVERPARAM_DATA to a folder holding them"
        )
    return root
