"""Keyed random projections P [D, d] from a d-dimensional subspace to a network's D parameters, with columns
of unit norm (Li et al. 2018, "Measuring the intrinsic dimension of objective landscapes", section 2 and
their released keras_ext/rproj_layers_util.py): a projection maps z [d] to P z [D].

- dense: Gaussian entries, every column divided by its norm. Memory d x D.
- sparse: Li, Hastie and Church's (2006) very sparse projection, density 1/sqrt(D): each entry is +-1 with
  probability 1/(2 sqrt(D)) each, else 0; columns divided by their norms. Memory ~ d sqrt(D).
- fastfood: Le et al.'s (2013) Fastfood transform as Li et al. use it, one block of L = 2^ceil(log2 D):
  P z = H G Pi H B [z; 0] sliced to its first D entries, divided by sqrt(L ||G||^2) sqrt(D / L). H is the
  unnormalised Walsh-Hadamard matrix, B random signs, Pi a random permutation, G Gaussian. Memory O(L),
  never d x D. Before slicing each column has norm exactly 1; slicing keeps a fraction D / L of it, which the
  second factor restores on average (as in Li et al.'s code), so columns are of unit norm only approximately.

Every projection is generated on the CPU from a key (`keyed_generator`), so the same key gives the same
projection on every device.
"""

import math

import numpy as np
import torch
from torch import nn

from overparam.config import ConfigError
from overparam.mislabel import keyed_generator

PROJECTIONS = ("dense", "sparse", "fastfood")
DENSE_LIMIT = 2**24  # entries of a dense P (64 MiB in float32) beyond which "auto" takes the sparse one
SPARSE_LIMIT = 2**26  # expected non-zeros of a sparse P beyond which "auto" takes Fastfood


def chosen_projection(name: str, *, d: int, D: int) -> str:
    """The projection to use: `name` itself, or for "auto" dense while d x D <= DENSE_LIMIT, sparse while
    d sqrt(D) <= SPARSE_LIMIT, Fastfood beyond."""
    if name == "auto":
        if d * D <= DENSE_LIMIT:
            return "dense"
        return "sparse" if d * math.sqrt(D) <= SPARSE_LIMIT else "fastfood"
    if name not in PROJECTIONS:
        raise ConfigError(f"unknown projection {name!r}; choose auto or one of {', '.join(PROJECTIONS)}")
    return name


def _torch_generator(*key: object) -> torch.Generator:
    return torch.Generator().manual_seed(int(keyed_generator("projection", *key).integers(2**62)))


class DenseProjection(nn.Module):
    """P [D, d]: Gaussian entries, unit-norm columns."""

    def __init__(self, *, d: int, D: int, key: tuple) -> None:
        super().__init__()
        matrix = torch.randn(D, d, generator=_torch_generator("dense", d, D, *key))
        self.register_buffer("matrix", matrix / matrix.norm(dim=0, keepdim=True))
        self.d, self.D = d, D

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.matrix @ z


class SparseProjection(nn.Module):
    """P [D, d] stored as its non-zeros (row, column, value): Li, Hastie and Church's very sparse random
    projection, density 1/sqrt(D), every column at least one non-zero, unit-norm columns."""

    def __init__(self, *, d: int, D: int, key: tuple) -> None:
        super().__init__()
        rng = keyed_generator("projection", "sparse", d, D, *key)
        counts = np.maximum(rng.binomial(D, 1 / math.sqrt(D), size=d), 1)
        columns = np.repeat(np.arange(d), counts)
        rows = rng.integers(D, size=len(columns))
        signs = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=len(columns))
        # A repeated (row, column) pair adds up, as a sparse matrix's duplicates do; norms count the sums.
        flat = np.unique(rows * d + columns, return_inverse=True)
        values = np.bincount(flat[1], weights=signs).astype(np.float32)
        rows, columns = flat[0] // d, flat[0] % d
        norms = np.sqrt(np.bincount(columns, weights=values.astype(np.float64) ** 2, minlength=d))
        keep = values != 0
        self.register_buffer("rows", torch.as_tensor(rows[keep]))
        self.register_buffer("columns", torch.as_tensor(columns[keep]))
        self.register_buffer(
            "values", torch.as_tensor(values[keep] / norms[columns[keep]], dtype=torch.float32)
        )
        self.d, self.D = d, D

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z.new_zeros(self.D).index_add(0, self.rows, self.values * z[self.columns])


def walsh_hadamard(x: torch.Tensor) -> torch.Tensor:
    """H x for x [L], L a power of two, H the unnormalised Sylvester-ordered Walsh-Hadamard matrix (entries
    +-1): log2 L butterfly stages, O(L) memory."""
    n, h = len(x), 1
    while h < n:
        pairs = x.view(n // (2 * h), 2, h)
        x = torch.stack((pairs[:, 0] + pairs[:, 1], pairs[:, 0] - pairs[:, 1]), dim=1).reshape(n)
        h *= 2
    return x


class FastfoodProjection(nn.Module):
    """P z = H G Pi H B [z; 0], its first D entries, scaled to unit-norm columns on average (module
    docstring); stores three vectors of L = 2^ceil(log2 D) entries."""

    def __init__(self, *, d: int, D: int, key: tuple) -> None:
        super().__init__()
        if d > D:
            raise ConfigError(f"a subspace of d = {d} does not fit {D} parameters; choose d <= D")
        length = 2 ** math.ceil(math.log2(max(D, 2)))
        generator = _torch_generator("fastfood", d, D, *key)
        signs = torch.randint(0, 2, (length,), generator=generator).float() * 2 - 1
        permutation = torch.randperm(length, generator=generator)
        gaussian = torch.randn(length, generator=generator)
        scale = math.sqrt(length * gaussian.square().sum().item()) * math.sqrt(D / length)
        self.register_buffer("signs", signs)
        self.register_buffer("permutation", permutation)
        self.register_buffer("gaussian", gaussian / scale)
        self.d, self.D, self.length = d, D, length

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        padded = torch.cat([z, z.new_zeros(self.length - self.d)])
        mixed = walsh_hadamard(self.signs * padded)[self.permutation] * self.gaussian
        return walsh_hadamard(mixed)[: self.D]


def make_projection(name: str, *, d: int, D: int, key: tuple) -> nn.Module:
    """The projection `name` (dense, sparse, fastfood or auto: `chosen_projection`) of a d-dimensional
    subspace into D parameters, determined by `key`. Its `forward` maps z [d] to P z [D]."""
    kinds = {"dense": DenseProjection, "sparse": SparseProjection, "fastfood": FastfoodProjection}
    if d < 1:
        raise ConfigError(f"a subspace needs d >= 1, got {d}")
    return kinds[chosen_projection(name, d=d, D=D)](d=d, D=D, key=key)
