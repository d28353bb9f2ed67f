import numpy as np
import pytest

from overparam.mislabel import (
    ChoiceError,
    class_balanced_subset,
    mislabel,
    per_class_count,
    validate_rate,
)

PROTOCOL_RATES = (1 / 125, 1 / 100, 1 / 90, 1 / 80, 1 / 70, 1 / 50, 1 / 20, 1 / 10)


def unbalanced_labels(n: int, seed: int = 0) -> np.ndarray:
    """Labels 0..9 with unequal class sizes, like MNIST's."""
    weights = np.linspace(1.0, 1.3, 10)
    return np.random.default_rng(seed).choice(10, size=n, p=weights / weights.sum())


@pytest.mark.parametrize("n", [3000, 6000, 20000])
@pytest.mark.parametrize("rate", PROTOCOL_RATES)
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_exact_per_class_counts_and_never_the_true_label(n: int, rate: float, seed: int) -> None:
    labels = unbalanced_labels(n, seed)
    chosen = mislabel(labels=labels, rate=rate, dataset="mnist", seed=seed)
    k = int(np.floor(rate * n / 10 + 0.5))
    assert np.array_equal(np.bincount(chosen.true_labels, minlength=10), np.full(10, k))
    assert np.array_equal(chosen.true_labels, labels[chosen.positions])
    assert np.all(chosen.assigned_labels != chosen.true_labels)
    assert chosen.assigned_labels.min() >= 0 and chosen.assigned_labels.max() <= 9
    assert len(np.unique(chosen.positions)) == 10 * k
    assigned = chosen.apply(labels)
    assert np.count_nonzero(assigned != labels) == 10 * k


def test_per_class_count_rounds_halves_up() -> None:
    assert per_class_count(rate=0.0125, n_images=10000, n_classes=10) == 13  # 12.5
    assert per_class_count(rate=1 / 90, n_images=60000, n_classes=10) == 67  # 66.67
    assert per_class_count(rate=1 / 125, n_images=60000, n_classes=10) == 48
    assert per_class_count(rate=0.0, n_images=60000, n_classes=10) == 0


def test_same_key_same_choice_and_seed_changes_it() -> None:
    labels = unbalanced_labels(5000)
    first = mislabel(labels=labels, rate=0.02, dataset="mnist", seed=3)
    again = mislabel(labels=labels, rate=0.02, dataset="mnist", seed=3)
    other_seed = mislabel(labels=labels, rate=0.02, dataset="mnist", seed=4)
    other_dataset = mislabel(labels=labels, rate=0.02, dataset="fashion-mnist", seed=3)
    assert np.array_equal(first.positions, again.positions)
    assert np.array_equal(first.assigned_labels, again.assigned_labels)
    assert not np.array_equal(first.positions, other_seed.positions)
    assert not np.array_equal(first.positions, other_dataset.positions)


def test_the_generator_stream_is_pinned() -> None:
    """Guards the promise 'identical on every machine': a changed key scheme or bit generator fails here."""
    chosen = mislabel(labels=np.repeat(np.arange(10), 100), rate=0.05, dataset="mnist", seed=0)
    assert chosen.positions[:5].tolist() == [4, 16, 23, 58, 67]
    assert chosen.assigned_labels[:5].tolist() == [7, 8, 7, 4, 4]


def test_higher_rates_extend_lower_rates() -> None:
    labels = unbalanced_labels(12000)
    previous: set[tuple[int, int]] = set()
    for rate in PROTOCOL_RATES:
        chosen = mislabel(labels=labels, rate=rate, dataset="mnist", seed=0)
        pairs = set(zip(chosen.positions.tolist(), chosen.assigned_labels.tolist(), strict=True))
        assert previous <= pairs
        previous = pairs


def test_new_labels_are_uniform_over_the_other_classes() -> None:
    from scipy.stats import chisquare

    labels = np.repeat(np.arange(10), 2000)
    chosen = mislabel(labels=labels, rate=0.5, dataset="mnist", seed=0)  # 1000 per class
    offsets = (chosen.assigned_labels - chosen.true_labels) % 10
    counts = np.bincount(offsets, minlength=10)
    assert counts[0] == 0
    assert chisquare(counts[1:]).pvalue > 0.001


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5])
def test_rates_outside_zero_one_are_rejected(rate: float) -> None:
    with pytest.raises(ChoiceError, match=r"outside \[0, 1\)"):
        validate_rate(rate=rate, n_images=60000)


def test_rate_rounding_to_zero_per_class_is_rejected_with_the_smallest_valid_rate() -> None:
    with pytest.raises(ChoiceError, match="0 images per class"):
        mislabel(labels=unbalanced_labels(1000), rate=0.004, dataset="mnist", seed=0)  # 0.4 per class


def test_rate_zero_is_a_control_with_no_mislabels() -> None:
    labels = unbalanced_labels(1000)
    chosen = mislabel(labels=labels, rate=0.0, dataset="mnist", seed=0)
    assert len(chosen.positions) == 0
    assert np.array_equal(chosen.apply(labels), labels)


def test_class_balanced_subset() -> None:
    labels = unbalanced_labels(20000)
    subset = class_balanced_subset(labels=labels, size=3000, dataset="mnist", split="train", seed=0)
    assert np.array_equal(np.bincount(labels[subset], minlength=10), np.full(10, 300))
    assert np.all(np.diff(subset) > 0)
    again = class_balanced_subset(labels=labels, size=3000, dataset="mnist", split="train", seed=0)
    other = class_balanced_subset(labels=labels, size=3000, dataset="mnist", split="train", seed=1)
    assert np.array_equal(subset, again) and not np.array_equal(subset, other)
    whole = class_balanced_subset(labels=labels, size=20000, dataset="mnist", split="train", seed=0)
    assert np.array_equal(whole, np.arange(20000))


@pytest.mark.parametrize("size", [0, 1005, 20010])
def test_impossible_subsets_are_rejected(size: int) -> None:
    with pytest.raises(ChoiceError, match="size"):
        class_balanced_subset(
            labels=unbalanced_labels(20000), size=size, dataset="mnist", split="train", seed=0
        )
