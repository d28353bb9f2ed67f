"""How well a per-image score (higher = more suspicious) finds the injected mislabels."""

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import average_precision_score, roc_auc_score

# Resamples x images drawn at once by bootstrap_detection (80 MB per int64 array).
_CHUNK_ELEMENTS = 10_000_000


def ranks(score: np.ndarray) -> np.ndarray:
    """Average ranks (1 = lowest) of a [N] score, with +inf ranked highest and -inf lowest, so that sklearn
    never sees infinities; ties share their mean rank. Raises ValueError on NaN."""
    score = np.asarray(score, dtype=float)
    if np.isnan(score).any():
        raise ValueError("score contains NaN")
    return rankdata(score, method="average")


def _checked(score: np.ndarray, mislabelled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    score, mislabelled = np.asarray(score, dtype=float), np.asarray(mislabelled, dtype=bool)
    if score.ndim != 1 or score.shape != mislabelled.shape:
        raise ValueError(f"score and mislabelled must both be [N]; got {score.shape}, {mislabelled.shape}")
    if mislabelled.all() or not mislabelled.any():
        raise ValueError("need both mislabelled and clean images")
    return score, mislabelled


def detection(*, score: np.ndarray, mislabelled: np.ndarray) -> dict[str, float]:
    """AUROC, average precision and precision and recall at k of `score` [N] (higher = more suspicious) at
    finding the `mislabelled` [N] bool images, with k = the number of mislabelled images.

    The top k are taken by a stable sort on descending score: ties at the cut go to the images earlier in
    the given order. Returns {"auroc", "average_precision", "precision_at_k", "recall_at_k", "k", "n"}.
    Raises ValueError without both mislabelled and clean images.
    """
    score, mislabelled = _checked(score, mislabelled)
    rank = ranks(score)
    k = int(mislabelled.sum())
    hits = int(mislabelled[np.argsort(-rank, kind="stable")[:k]].sum())
    return {
        "auroc": float(roc_auc_score(mislabelled, rank)),
        "average_precision": float(average_precision_score(mislabelled, rank)),
        "precision_at_k": hits / k,
        "recall_at_k": hits / k,  # equals precision at k, as k is the number of mislabelled images
        "k": k,
        "n": mislabelled.size,
    }


def _level_counts(levels: np.ndarray, n_levels: int) -> np.ndarray:
    """[B, n_levels] counts of each score level in each row of the drawn levels [B, m]."""
    offsets = np.arange(levels.shape[0])[:, None] * n_levels
    return np.bincount((levels + offsets).ravel(), minlength=levels.shape[0] * n_levels).reshape(-1, n_levels)


def _auroc_and_ap(positives: np.ndarray, negatives: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[B] AUROC and average precision from [B, levels] counts of mislabelled and clean images per score
    level, levels in descending score; the same as sklearn's on each resample, ties included."""
    n_pos, n_neg = positives.sum(axis=1), negatives.sum(axis=1)
    true_pos, false_pos = positives.cumsum(axis=1), negatives.cumsum(axis=1)
    # Each clean image scores below the mislabelled images of higher levels and ties (half) with its own.
    auroc = (negatives * (true_pos - positives / 2)).sum(axis=1) / (n_pos * n_neg)
    precision = true_pos / np.maximum(true_pos + false_pos, 1)
    return auroc, (positives * precision).sum(axis=1) / n_pos


def bootstrap_detection(
    *, score: np.ndarray, mislabelled: np.ndarray, n_resamples: int = 1000, seed: int = 0
) -> dict[str, tuple[float, float]]:
    """95 % percentile bootstrap intervals of detection()'s AUROC and average precision.

    Each resample draws the mislabelled and the clean images separately, with replacement, as many of each
    as there are (stratified), using np.random.default_rng(seed). These intervals are within one model:
    they cover the choice of images, not of training, since the images of one run are not independent
    replicates of training (the seeds are); they say nothing of the spread between seeds.
    Returns {"auroc": (low, high), "average_precision": (low, high)}.
    """
    score, mislabelled = _checked(score, mislabelled)
    _, inverse = np.unique(-ranks(score), return_inverse=True)  # score level of each image, 0 = highest
    n_levels = int(inverse.max()) + 1
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_ELEMENTS // score.size)  # score.size >= n_levels
    aurocs, aps = [], []
    for start in range(0, n_resamples, chunk):
        b = min(chunk, n_resamples - start)
        counts = [
            _level_counts(rng.choice(inverse[group], size=(b, group.sum())), n_levels)
            for group in (mislabelled, ~mislabelled)
        ]
        auroc, ap = _auroc_and_ap(*counts)
        aurocs.append(auroc)
        aps.append(ap)
    return {
        name: tuple(float(q) for q in np.percentile(np.concatenate(values), [2.5, 97.5]))
        for name, values in (("auroc", aurocs), ("average_precision", aps))
    }
