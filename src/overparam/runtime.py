"""Device choice, determinism and the record of what computed a result."""

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from overparam import __version__
from overparam.config import ConfigError


def select_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; 'cuda' without a GPU is a ConfigError."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but PyTorch sees no GPU; use --device cpu or auto")
    return torch.device(name)


# oneMKL 2024.2, which PyTorch's CPU wheels bundle, picks each vector-math (VML) function's kernel on its
# first call; first calls racing on several threads can run a low-accuracy kernel for one thread's share,
# up to ~4000 ulp (pytorch/pytorch#188792; Adam's sqrt is one). A one-element call settles the choice on one
# thread first.
_VML_FUNCTIONS = (torch.sqrt, torch.rsqrt, torch.exp, torch.log, torch.tanh, torch.erf)


def make_deterministic() -> None:
    """Same seed, same machine -> same results. Must run before the first CUDA call."""
    for dtype in (torch.float32, torch.float64):
        for function in _VML_FUNCTIONS:
            function(torch.ones(1, dtype=dtype))
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    # Deterministic mode also fills every new tensor with NaN, a guard against kernels that read memory
    # they never wrote; ours do not (tests/test_runtime.py), and the fill cost 15 % of a forward pass.
    torch.utils.deterministic.fill_uninitialized_memory = False
    torch.backends.cudnn.benchmark = False


def _git_commit() -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def trajectory_environment(device: torch.device) -> dict[str, Any]:
    """What, besides the settings, decides a training trajectory's rounding: the device, PyTorch's version
    and, on a CPU, the thread count (it splits reductions). A checkpoint made under other values is not
    resumed: the model would be half one trajectory, half another."""
    facts: dict[str, Any] = {"device": device.type, "torch": str(torch.__version__)}
    if device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(device)
    else:
        facts["cpu_threads"] = torch.get_num_threads()
    return facts


def environment(device: torch.device) -> dict[str, Any]:
    """Versions, device and host facts to store beside every result."""
    packages = ("torch", "torchvision", "numpy", "pandas", "scipy")
    record: dict[str, Any] = {
        # overparam's own version from the source: run from src/ (as on a GPU machine) it is not installed
        "versions": {"overparam": __version__, **{name: metadata.version(name) for name in packages}},
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "device": str(device),
        "git_commit": _git_commit(),
    }
    if device.type == "cuda":
        record["gpu"] = torch.cuda.get_device_name(device)
        record["cuda"] = torch.version.cuda
        # PyTorch's defaults: cuDNN convolutions may use TF32 (10-bit mantissa inputs), matmuls may not.
        record["tf32"] = {
            "cudnn": torch.backends.cudnn.allow_tf32,
            "matmul": torch.backends.cuda.matmul.allow_tf32,
        }
    return record
