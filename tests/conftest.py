import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

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


@pytest.fixture
def placement(data_root: Path, tmp_path: Path) -> list[str]:
    """The flags that put a test's study in its own store and output folder under `tmp_path`."""
    return ["--data-dir", str(data_root), "--store", str(tmp_path / "store"), "--out", str(tmp_path / "out")]


@pytest.fixture(scope="session", autouse=True)
def run_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One run store for the whole session, never the user's: tests with equal settings share runs, as
    studies do; a test that needs fresh computation passes its own --store."""
    store = tmp_path_factory.mktemp("store")
    previous = os.environ.get("OVERPARAM_STORE")
    os.environ["OVERPARAM_STORE"] = str(store)
    yield store
    if previous is None:
        del os.environ["OVERPARAM_STORE"]
    else:
        os.environ["OVERPARAM_STORE"] = previous


@pytest.fixture
def compiled_models(monkeypatch: pytest.MonkeyPatch) -> list[torch.nn.Module]:
    """Every model passed to torch.compile during the test, in order (torch.compile itself still runs)."""
    real_compile, compiled = torch.compile, []

    def spy(model: torch.nn.Module, **settings: object) -> torch.nn.Module:
        compiled.append(model)
        return real_compile(model, **settings)

    monkeypatch.setattr(torch, "compile", spy)
    return compiled
