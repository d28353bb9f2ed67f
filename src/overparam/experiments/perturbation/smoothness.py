"""Smoothness of the mislabelled images' changed-fraction curves, separated from their number (issue 11,
item 8).

The curve of a set of images under a perturbation (overparam.perturb) is the fraction of them whose
prediction differs from their own level-0 (unperturbed) prediction, at each grid level (the "changed"
outcome of analysis.py; for blur the level is sigma in pixels). A curve of few images is rough through
binomial noise alone, and a run has far fewer mislabelled than clean images; so the mislabelled curve is
compared with curves of random subsets of the same run's clean images of the same size, under the same
perturbation. Each run x perturbation is tested on its own.

Roughness (`curve_roughness`) is the root mean square, over the interior grid levels, of the curve's
departure from the straight line through its two neighbouring grid points:

    d_i = f_i - (f_{i-1} (s_{i+1} - s_i) + f_{i+1} (s_i - s_{i-1})) / (s_{i+1} - s_{i-1}),  i = 1 .. L-2
    roughness = sqrt(mean_i d_i^2)

in the curve's own unit, a fraction of the set's images (0 to 1). On an evenly spaced grid d_i is minus half
the second difference (f_{i-1} - 2 f_i + f_{i+1}) / 2. Why this definition: second differences remove the
local level and slope, so a curve that rises steeply but smoothly is not called rough, while point-to-point
zigzags (binomial noise of few images, or images that flip back and forth between neighbouring levels) are;
total variation or first differences would instead measure how much a curve rises. Measured against the
neighbours' straight line it is zero for any straight line in the level, also on an uneven grid, and it does
not depend on the unit or spacing of the level (a second derivative, in fraction / pixel^2 for blur, grows
as 1 / spacing^2 for the same noise, so finer grids would look rougher). The root mean square, rather than
the mean absolute departure, is the standard deviation of the departures, the scale of binomial noise (about
1 / sqrt(n) for n images).

Caveat, for reading the result: the test matches size, not shape. A curve's binomial roughness also grows
with how many images flip between neighbouring levels, so a mislabelled curve that rises faster than the
clean one is expected to be rougher even at equal size; `mislabelled_mean_changed` and `clean_mean_changed`
show how far the two curves differ in level.
"""

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.stats import t as student_t

from overparam.results import FAMILY, KEYS, PERTURBATION, RunImages, numbered, run_keys, with_rate_percent

SUBSETS = ("all", "fit")  # the order fixes each subset's random stream
ALPHA = 0.05
ONE_SEED = "one seed: within one model"
# Elements per block of resamples (random keys and their gathered images): bounds memory to tens of MB.
BLOCK_ELEMENTS = 1 << 21

TEST_COLUMNS = (
    "subset",
    "n_mislabelled",
    "n_clean",
    "n_resamples",
    "roughness",
    "resampled_median",
    "resampled_low",
    "resampled_high",
    "ratio",
    "log_ratio",
    "p_value",
    "mislabelled_mean_changed",
    "clean_mean_changed",
    "note",
)
SUMMARY_COLUMNS = (
    "n_seeds",
    "mean_log_ratio",
    "log_ratio_low",
    "log_ratio_high",
    "ratio",
    "ratio_low",
    "ratio_high",
    "n_significant",
    "basis",
)


def curve_roughness(curves: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Roughness (module docstring) of curves [..., L] on the grid levels [L], strictly increasing.

    Returns [...]: the root mean square departure of each interior point from the straight line through its
    two neighbours, in the curves' unit (a fraction of images); NaN when L < 3.
    """
    curves, levels = np.asarray(curves, dtype=float), np.asarray(levels, dtype=float)
    if len(levels) < 3:
        return np.full(curves.shape[:-1], np.nan)
    left, right = np.diff(levels)[:-1], np.diff(levels)[1:]
    line = (curves[..., :-2] * right + curves[..., 2:] * left) / (left + right)
    return np.sqrt(np.mean((curves[..., 1:-1] - line) ** 2, axis=-1))


def resampled_roughness(
    changed: np.ndarray, levels: np.ndarray, *, size: int, n_resamples: int, rng: np.random.Generator
) -> np.ndarray:
    """[n_resamples] roughness of the curves of random subsets of `size` images, each drawn without
    replacement from the images (columns) of changed [L, N] bool.

    A subset is the `size` smallest of N uniform random keys; resamples are processed in blocks of
    about BLOCK_ELEMENTS keys so memory stays bounded whatever N and n_resamples.
    """
    steps, count = changed.shape
    if not 0 < size <= count:
        raise ValueError(f"cannot draw {size} of {count} images without replacement")
    by_image = np.ascontiguousarray(changed.T, dtype=np.uint8)  # [N, L]: a gather takes whole rows
    block = max(1, BLOCK_ELEMENTS // max(count, size * steps))
    result = np.empty(n_resamples)
    for start in range(0, n_resamples, block):
        stop = min(start + block, n_resamples)
        keys = rng.random((stop - start, count))
        chosen = np.argpartition(keys, size - 1, axis=1)[:, :size]  # [b, size]
        counts = by_image[chosen].sum(axis=1, dtype=np.int64)  # [b, L]
        result[start:stop] = curve_roughness(counts / size, levels)
    return result


def roughness_test(
    study_images: Sequence[RunImages],
    *,
    n_resamples: int = 999,
    seed: int = 0,
    subsets: Sequence[str] = SUBSETS,
) -> pd.DataFrame:
    """Whether each run's mislabelled curve is rougher than curves of as many of its clean images, under
    each perturbation.

    For every run x perturbation with mislabelled images and each subset ("all": every mislabelled and every
    clean image; "fit": only the images of each group whose level-0 prediction equals their assigned
    label), the observed roughness of the mislabelled curve (m images) is compared with the roughness of the
    curves of n_resamples random subsets of m of the run's clean images, drawn without replacement. One-sided
    resampling p-value: p = (1 + #{resampled >= observed}) / (1 + n_resamples), small when the mislabelled
    curve is rougher than size-matched clean curves. The resampled subsets are exchangeable with the
    mislabelled set when the groups do not differ and n_clean is much larger than m (at a 10 % rate
    n_clean = 9 m); the test is approximate when it is not, and rows where n_clean <= m are not tested.

    Randomness: numpy default_rng([seed, the run's position among the runs of its perturbation in
    study_images, subset position in SUBSETS, and for a perturbation other than blur a number of its name])
    (`analysis.numbered`): one perturbation's draws do not depend on which others were probed.

    Returns one row per run x perturbation x subset: the run's key columns (and rate_percent), perturbation,
    then subset, n_mislabelled,
    n_clean, n_resamples, roughness (observed, a fraction of images, see `curve_roughness`),
    resampled_median, resampled_low and resampled_high (2.5 % and 97.5 % quantiles of the resampled
    roughness), ratio (observed / resampled median; inf when that median is 0), log_ratio, p_value,
    mislabelled_mean_changed and clean_mean_changed (each curve's mean over the grid), and note (empty, or
    why the row is NaN: no mislabelled images in the subset, too few clean images, fewer than 3 levels).
    """
    unknown = sorted(set(subsets) - set(SUBSETS))
    if unknown:
        raise ValueError(f"unknown subsets {unknown}; choose from {SUBSETS}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    rows = []
    for (number, *code), run in numbered(study_images):
        mislabelled = run.group == "mislabelled"
        if not mislabelled.any():
            continue
        changed = run.predictions != run.predictions[0]  # [L, N]
        for subset in subsets:
            keep = run.fit if subset == "fit" else np.ones_like(mislabelled)
            rng = np.random.default_rng([seed, number, SUBSETS.index(subset), *code])
            test = _test_run(
                changed[:, mislabelled & keep],
                changed[:, (run.group == "clean") & keep],
                np.asarray(run.levels, dtype=float),
                n_resamples=n_resamples,
                rng=rng,
            )
            rows.append(run_keys(run) | {"subset": subset} | test)
    if not rows:
        return pd.DataFrame(columns=[*KEYS, PERTURBATION, *TEST_COLUMNS])
    table = pd.DataFrame(rows)
    return with_rate_percent(table) if "rate" in table else table


def _test_run(
    mislabelled: np.ndarray,
    clean: np.ndarray,
    levels: np.ndarray,
    *,
    n_resamples: int,
    rng: np.random.Generator,
) -> dict[str, float | int | str]:
    """The `roughness_test` columns of one run x subset, from the changed matrices [L, m] and [L, n_clean]."""
    size, n_clean = mislabelled.shape[1], clean.shape[1]
    row: dict[str, float | int | str] = {"n_mislabelled": size, "n_clean": n_clean}
    row["n_resamples"] = n_resamples
    means = {
        "mislabelled_mean_changed": float(mislabelled.mean()) if size else np.nan,
        "clean_mean_changed": float(clean.mean()) if n_clean else np.nan,
    }
    statistics = dict.fromkeys(TEST_COLUMNS[4:11], np.nan)
    note = ""
    if size == 0:
        note = "no mislabelled images in this subset"
    elif n_clean <= size:
        note = "no more clean images than mislabelled ones"
    elif len(levels) < 3:
        note = "fewer than 3 levels"
    else:
        observed = float(curve_roughness(mislabelled.sum(axis=1) / size, levels))
        resampled = resampled_roughness(clean, levels, size=size, n_resamples=n_resamples, rng=rng)
        low, median, high = np.quantile(resampled, [0.025, 0.5, 0.975])
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = observed / median
            log_ratio = np.log(ratio)
        # ties count as "at least as rough"; the tolerance absorbs rounding in the curves' arithmetic
        at_least = int(np.sum(resampled >= observed - 1e-12))
        statistics = {
            "roughness": observed,
            "resampled_median": float(median),
            "resampled_low": float(low),
            "resampled_high": float(high),
            "ratio": float(ratio),
            "log_ratio": float(log_ratio),
            "p_value": (1 + at_least) / (1 + n_resamples),
        }
    return row | statistics | means | {"note": note}


def roughness_by_rate(table: pd.DataFrame) -> pd.DataFrame:
    """Seed-level summary of `roughness_test`: one row per (variant, dataset, model, width, train_size,
    perturbation, rate, subset) over its tested seeds (rows with a log ratio; untested rows are left out).

    Seeds are the unit of replication (images within one model are not independent replicates), so the
    interval is over seeds: mean log ratio +- t_{0.975, k-1} sd / sqrt(k) for k seeds (sd with k - 1 in the
    denominator). Columns: the key columns, rate_percent, subset, n_seeds, mean_log_ratio, log_ratio_low,
    log_ratio_high, ratio, ratio_low, ratio_high (exp of the three: the geometric mean ratio and its
    interval), n_significant (seeds with p_value < 0.05) and basis: "k seeds: between models", or for one
    seed "one seed: within one model" with no interval (NaN), the run's own p_value being the only test.
    """
    groups = [column for column in (*FAMILY, PERTURBATION, "rate") if column in table]
    tested = table[table["log_ratio"].notna()] if "log_ratio" in table else table.iloc[0:0]
    if tested.empty:
        return pd.DataFrame(columns=[*groups, "subset", *SUMMARY_COLUMNS])
    rows = []
    for keys, runs in tested.groupby([*groups, "subset"], sort=True, dropna=False):
        log_ratio = runs["log_ratio"].to_numpy(dtype=float)
        count = len(log_ratio)
        mean = float(log_ratio.mean())
        if count > 1:
            half = float(student_t.ppf(0.975, count - 1) * log_ratio.std(ddof=1) / np.sqrt(count))
            low, high, basis = mean - half, mean + half, f"{count} seeds: between models"
        else:
            low, high, basis = np.nan, np.nan, ONE_SEED
        rows.append(
            dict(zip([*groups, "subset"], keys, strict=True))
            | {"n_seeds": count, "mean_log_ratio": mean, "log_ratio_low": low, "log_ratio_high": high}
            | {"ratio": np.exp(mean), "ratio_low": np.exp(low), "ratio_high": np.exp(high)}
            | {"n_significant": int((runs["p_value"] < ALPHA).sum()), "basis": basis}
        )
    summary = pd.DataFrame(rows)
    return with_rate_percent(summary) if "rate" in summary else summary
