"""The target functions of the SGD and label-noise experiments, and the training inputs.

Three fixed functions of the 7-bit cube (x0 the leading bit), of low, medium and high complexity in
Valle-Perez et al.'s measure (`boolean.lz_complexity`, bits): a simple rule, a rule of five of the bits, and
a random function (fixed: drawn once from its own seed). Mingard et al.'s were of complexity 38.5, 84 and
164.5; ours are 42, 91 and 154."""

import numpy as np

from overparam.config import ConfigError

N_BITS = 7  # the catalogue's functions are written on 7 bits


def _bits() -> np.ndarray:
    index = np.arange(2**N_BITS)
    return (index[None, :] >> (N_BITS - 1 - np.arange(N_BITS))[:, None]) & 1


def _low(x: np.ndarray) -> np.ndarray:
    return x[0] & (x[3] | x[5])


def _medium(x: np.ndarray) -> np.ndarray:
    return x[0] ^ (x[3] & x[5]) ^ (x[2] | x[6])


def _high(x: np.ndarray) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 2, x.shape[1])


TARGETS = {"low": _low, "medium": _medium, "high": _high}
FORMULAS = {"low": "x0 and (x3 or x5)", "medium": "x0 xor (x3 and x5) xor (x2 or x6)", "high": "random"}


def target(name: str) -> np.ndarray:
    """The outputs [128] uint8 (0/1) of target `name` on every input, in input order."""
    if name not in TARGETS:
        raise ConfigError(f"unknown target {name!r}; choose from {', '.join(TARGETS)}")
    return TARGETS[name](_bits()).astype(np.uint8)


def train_split(*, train_size: int, seed: int) -> np.ndarray:
    """The training inputs: `train_size` of the 128, drawn from `seed`, sorted [train_size] int."""
    if not 0 < train_size < 2**N_BITS:
        raise ConfigError(f"--train-size must be between 1 and {2**N_BITS - 1}, got {train_size}")
    return np.sort(np.random.default_rng(seed).permutation(2**N_BITS)[:train_size])
