"""Class-balanced, deterministic choices of images: training subsets and mislabelling (PROTOCOL step 2).

Every choice comes from a NumPy PCG64 generator seeded by a SHA-256 of its key, so it is the same on every
machine and every NumPy version that keeps PCG64's stream (NumPy guarantees this for `permutation` and
`integers` on a given BitGenerator).

Mislabelling sets are nested: for one (dataset, train size, seed) the images chosen at a rate are the first
`k` of a fixed per-class order, each with a fixed wrong label, so a higher rate adds images to a lower
rate's set. The choice still depends only on (dataset, train size, rate, seed), and comparisons between
rates are paired rather than confounded by a fresh draw at every rate.
"""

import hashlib
import math
from dataclasses import dataclass

import numpy as np


class ChoiceError(ValueError):
    """A requested subset or mislabelling rate cannot be realised on this data."""


def keyed_generator(*key: object) -> np.random.Generator:
    """A NumPy generator determined only by `key` (any values with a stable `str`)."""
    digest = hashlib.sha256("|".join(map(str, key)).encode()).digest()
    return np.random.default_rng(np.frombuffer(digest, dtype=np.uint32))


def per_class_count(*, rate: float, n_images: int, n_classes: int) -> int:
    """`k = round(rate * N / C)`, halves rounded up (Python's `round` would send 12.5 to 12)."""
    return math.floor(rate * n_images / n_classes + 0.5)


def class_balanced_subset(
    *, labels: np.ndarray, size: int, dataset: str, split: str, seed: int, n_classes: int = 10
) -> np.ndarray:
    """Sorted positions of `size / C` images per class ([size] int64); all positions when size is the split's.

    Raises ChoiceError when `size` is not a multiple of C or a class has fewer than `size / C` images.
    """
    labels = np.asarray(labels)
    if size == len(labels):
        return np.arange(len(labels))
    if size <= 0 or size % n_classes:
        raise ChoiceError(f"{split} size {size} must be a positive multiple of {n_classes} (classes)")
    per_class = size // n_classes
    class_sizes = np.bincount(labels, minlength=n_classes)
    if per_class > class_sizes.min():
        largest = int(class_sizes.min()) * n_classes
        raise ChoiceError(
            f"{split} size {size} needs {per_class} images per class but the smallest class of {dataset} has "
            f"{class_sizes.min()}; use at most {largest}, or {len(labels)} for the whole split"
        )
    rng = keyed_generator("subset", dataset, split, size, seed)
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in range(n_classes)]
    return np.sort(np.concatenate(chosen))


@dataclass(frozen=True)
class Mislabelling:
    """The mislabelled images of one run; positions index the (possibly subset) training arrays."""

    positions: np.ndarray  # [k * C] int64, sorted
    true_labels: np.ndarray  # [k * C] int64
    assigned_labels: np.ndarray  # [k * C] int64, never equal to true_labels

    def apply(self, labels: np.ndarray) -> np.ndarray:
        """The assigned labels of the whole training set: a copy of `labels` with this set replaced."""
        assigned = np.array(labels, copy=True)
        assigned[self.positions] = self.assigned_labels
        return assigned


def validate_rate(*, rate: float, n_images: int, n_classes: int = 10) -> int:
    """The per-class count for `rate`; ChoiceError for a rate outside [0, 1) or one that rounds to 0."""
    if not 0 <= rate < 1:
        raise ChoiceError(f"mislabelling rate {rate} is outside [0, 1); give a fraction such as 0.01 or 1/90")
    k = per_class_count(rate=rate, n_images=n_images, n_classes=n_classes)
    if rate > 0 and k == 0:
        smallest = n_classes * 0.5 / n_images
        raise ChoiceError(
            f"mislabelling rate {rate} gives round({rate} * {n_images} / {n_classes}) = 0 images per class; "
            f"use a rate of at least {smallest:.4g} or a larger --train-size"
        )
    return k


def mislabel(
    *, labels: np.ndarray, rate: float, dataset: str, seed: int, n_classes: int = 10
) -> Mislabelling:
    """Choose `k = round(rate * N / C)` images of every class and give each a label drawn uniformly from
    the C - 1 other classes. `labels` are the true labels of the N training images, [N] int."""
    labels = np.asarray(labels, dtype=np.int64)
    k = validate_rate(rate=rate, n_images=len(labels), n_classes=n_classes)
    class_sizes = np.bincount(labels, minlength=n_classes)
    if k > class_sizes.min():
        raise ChoiceError(
            f"rate {rate} needs {k} images per class but the smallest class has {class_sizes.min()}"
        )
    rng = keyed_generator("mislabel", dataset, len(labels), seed)
    positions, assigned = [], []
    for c in range(n_classes):
        members = rng.permutation(np.flatnonzero(labels == c))
        offsets = rng.integers(1, n_classes, size=len(members))  # drawn for all members: keeps sets nested
        positions.append(members[:k])
        assigned.append((c + offsets[:k]) % n_classes)
    positions, assigned = np.concatenate(positions), np.concatenate(assigned)
    order = np.argsort(positions)
    return Mislabelling(
        positions=positions[order], true_labels=labels[positions[order]], assigned_labels=assigned[order]
    )
