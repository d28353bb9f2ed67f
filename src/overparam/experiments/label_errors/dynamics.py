"""Per-image label-error scores from training dynamics: area under the margin and forgetting events."""

import numpy as np


def _check_epochs_by_images(name: str, values: np.ndarray) -> None:
    if values.ndim != 2 or values.shape[0] == 0:
        raise ValueError(f"{name} must be [epochs >= 1, N]; got shape {values.shape}")


def area_under_margin(margins: np.ndarray) -> np.ndarray:
    """Area under the margin (AUM) of every image: its margin averaged over the epochs.

    margins: [epochs, N] float, the assigned label's logit minus the largest other logit, recorded in each
    image's own training-minibatch forward pass every epoch.
    Returns [N] float in logit units; low (negative) = suspicious.

    Pleiss et al. 2020, "Identifying Mislabeled Data using the Area Under the Margin Ranking", eq. 2; the
    released code (asappresearch/aum) likewise averages the margin over the recorded presentations.
    """
    margins = np.asarray(margins, dtype=float)
    _check_epochs_by_images("margins", margins)
    return margins.mean(axis=0)


def forgetting_events(correct: np.ndarray) -> np.ndarray:
    """Number of forgetting events of every image: epochs t >= 1 with correct[t - 1] and not correct[t].

    correct: [epochs, N] bool, whether the image's training-minibatch prediction equals its assigned label.
    Returns [N] float; an image never classified correctly gets np.inf, as never-learnt examples count as
    forgotten infinitely often and rank first. High = suspicious.

    Toneva et al. 2019, "An Empirical Study of Example Forgetting during Deep Neural Network Learning".
    """
    correct = np.asarray(correct, dtype=bool)
    _check_epochs_by_images("correct", correct)
    events = (correct[:-1] & ~correct[1:]).sum(axis=0).astype(float)
    events[~correct.any(axis=0)] = np.inf
    return events
