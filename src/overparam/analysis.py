"""Statistics of a finished study (PROTOCOL step 6), as tidy tables: one observation per row, with the run
key columns where they apply. Everything is computed from the study's tables and saved predictions; nothing
is retrained or re-probed. `analyse` makes every table; report.py writes them to OUT/analysis/.

Conventions: sigma in pixels; intervals are 95 %; the "changed" outcome of an image at sigma s is that its
prediction differs from its own prediction at sigma 0, and its flip sigma is the first grid sigma where that
happens (never flipped on the grid = right-censored at the largest sigma).
"""

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import CensoredData, logrank

from overparam.probe import GROUPS, flip_positions
from overparam.stats import Z95, add_wilson_columns, wilson_interval
from overparam.storage import read_json, read_verified, study_table, with_keys

# A family is the runs whose rates and seeds are compared: one study variant (a sweep's grid point, README
# "Sweeps"; "all" otherwise) of one data set, model, width and training-set size.
FAMILY = ("variant", "dataset", "model", "width", "train_size")
KEYS = (*FAMILY, "rate", "seed")
SUMMARIES = ("auc", "half_sigma")
TRAINING_COLUMNS = (
    "schedule", "epochs", "first_target_epoch", "final_lr", "reached_target", "train_acc",
    "mislabelled_train_acc", "test_acc",
)  # fmt: skip


@dataclass(frozen=True)
class RunImages:
    """Every image of one probed run, training images first, then test images."""

    keys: dict[str, Any]
    sigmas: np.ndarray  # [S] pixels, ascending, sigmas[0] == 0
    predictions: np.ndarray  # [S, N] predicted class
    group: np.ndarray  # [N] "mislabelled", "clean" or "test"
    index: np.ndarray  # [N] position in the original split (train or test)
    true_label: np.ndarray  # [N]
    assigned_label: np.ndarray  # [N] (the true label for test images)

    @property
    def fit(self) -> np.ndarray:
        """[N] bool: the sigma-0 prediction equals the assigned label."""
        return self.predictions[0] == self.assigned_label


@dataclass(frozen=True)
class Study:
    """The tables of an output folder (README, "Outputs") and the saved predictions of every probed run."""

    out: Path
    config: dict[str, Any]
    runs: pd.DataFrame
    metrics: pd.DataFrame
    curves: pd.DataFrame
    flips: pd.DataFrame
    images: list[RunImages]


def load_study(out: Path) -> Study:
    """Read OUT/config.json, runs.csv, metrics.csv, curves.csv, flips.csv and each run's predictions.npz.

    Runs without predictions on the study's sigma grid are left out of `images`. Raises FileNotFoundError
    naming what is missing when the folder holds no probed study.
    """
    required = [out / "config.json", *(study_table(out, name) for name in ("runs", "curves", "flips"))]
    missing = [path.name for path in required if not path.exists()]
    if missing:
        raise FileNotFoundError(f"{out} has no {', '.join(missing)}: run `overparam reproduce` first")
    config = read_json(out / "config.json")
    runs, curves, flips = (
        _with_variant(pd.read_csv(study_table(out, name))) for name in ("runs", "curves", "flips")
    )
    metrics_table = study_table(out, "metrics")
    metrics = _with_variant(pd.read_csv(metrics_table)) if metrics_table.exists() else pd.DataFrame()
    images = []
    flips_by_run = dict(iter(flips.groupby(list(KEYS), sort=False)))
    curves_by_run = dict(iter(curves.groupby(list(KEYS), sort=False)))
    for run in runs.itertuples(index=False):
        keys = {key: getattr(run, key) for key in KEYS}
        run_flips = flips_by_run.get(tuple(keys.values()))
        if run_flips is None:
            continue
        sigmas = np.sort(curves_by_run[tuple(keys.values())]["sigma"].unique())
        saved = _saved_predictions(
            out / "runs" / str(run.run_id), getattr(run, "probe_id", None), sigmas, run_flips
        )
        if saved is not None:
            images.append(_run_images(keys, saved, run_flips))
    if not images:
        raise FileNotFoundError(f"no run in {out / 'runs'} has a predictions.npz on the sigmas of curves.csv")
    return Study(
        out=out, config=config, runs=runs, metrics=metrics, curves=curves, flips=flips, images=images
    )


def _with_variant(table: pd.DataFrame) -> pd.DataFrame:
    """`table` with a text `variant` column ("all" in the tables of a study written before variants)."""
    variant = table["variant"].astype(str) if "variant" in table else "all"
    return table.assign(variant=variant)


def _saved_predictions(
    run_dir: Path, probe_id: str | None, sigmas: np.ndarray, flips: pd.DataFrame
) -> dict[str, np.ndarray] | None:
    """The arrays of the run's predictions.npz of this study's probe, `probe_id` (runs.csv names it), read
    from bytes checked against probe.json. Tables written before runs.csv named it: the probe on the run's
    sigma grid and of the images in its flips.csv (a run in a shared store may hold probes of other grids,
    or of other clean samples)."""
    if isinstance(probe_id, str):
        record = run_dir / probe_id / "probe.json"
        if not record.exists():
            return None
        with np.load(io.BytesIO(read_verified(record, "predictions.npz"))) as saved:
            return dict(saved)
    images = {split: np.sort(rows["index"].to_numpy()) for split, rows in flips.groupby("split")}
    for path in sorted(run_dir.glob("probe-*/predictions.npz")):
        with np.load(path) as saved:
            if np.array_equal(saved["sigmas"], sigmas) and all(
                np.array_equal(np.sort(saved[f"{split}_index"]), images.get(split))
                for split in ("train", "test")
            ):
                return dict(saved)
    return None


def _run_images(keys: dict[str, Any], saved: dict[str, np.ndarray], flips: pd.DataFrame) -> RunImages:
    train_index, test_index = saved["train_index"], saved["test_index"]
    facts = pd.concat(
        [
            flips[flips["split"] == split].set_index("index").reindex(index)
            for split, index in (("train", train_index), ("test", test_index))
        ]
    )
    group = np.where(facts["split"] == "test", "test", np.where(facts["mislabelled"], "mislabelled", "clean"))
    return RunImages(
        keys=keys,
        sigmas=saved["sigmas"].astype(float),
        predictions=np.concatenate([saved["train"], saved["test"]], axis=1),
        group=group,
        index=np.r_[train_index, test_index],
        true_label=facts["true_label"].to_numpy(),
        assigned_label=facts["assigned_label"].to_numpy(),
    )


def with_rate_percent(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with a `rate_percent` column (100 x rate) right after `rate`, for readable reports."""
    frame = frame.copy()
    frame.insert(frame.columns.get_loc("rate") + 1, "rate_percent", 100 * frame["rate"])
    return frame


# --- the starting gap --------------------------------------------------------------------------------------


def ratio_interval(
    *, errors_a: np.ndarray, n_a: np.ndarray, errors_b: np.ndarray, n_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ratio of two proportions (errors_a / n_a) / (errors_b / n_b) and its 95 % Katz log interval.

    Where a count of errors is 0 every count gets +0.5 (Haldane-Anscombe), so the ratio and its interval stay
    finite; NaN where both error counts are 0 or a group is empty. Elementwise over broadcast arrays.
    """
    a, na, b, nb = (np.asarray(x, dtype=float) for x in (errors_a, n_a, errors_b, n_b))
    undefined = ((a == 0) & (b == 0)) | (na == 0) | (nb == 0)
    correction = 0.5 * ((a == 0) | (b == 0))
    a, na, b, nb = a + correction, na + correction, b + correction, nb + correction
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(undefined, np.nan, (a / na) / (b / nb))
        half_width = Z95 * np.sqrt(1 / a - 1 / na + 1 / b - 1 / nb)
    return ratio, ratio * np.exp(-half_width), ratio * np.exp(half_width)


def starting_gap(curves: pd.DataFrame) -> pd.DataFrame:
    """Per run, the error rate at sigma 0 (prediction differs from the assigned label) of mislabelled and of
    clean images with Wilson intervals, and their ratio (mislabelled / clean) with a Katz interval."""
    at_zero = curves[curves["sigma"] == 0]
    columns: dict[str, Any] = {}
    for group in ("mislabelled", "clean"):
        rows = at_zero[at_zero["group"] == group].set_index(list(KEYS))
        n = rows["n"]
        errors = n - rows["agree_assigned"]
        fraction, low, high = wilson_interval(successes=errors.to_numpy(), trials=n.to_numpy())
        columns |= {
            f"n_{group}": n,
            f"errors_{group}": errors,
            f"error_{group}": pd.Series(fraction, n.index),
            f"error_{group}_low": pd.Series(low, n.index),
            f"error_{group}_high": pd.Series(high, n.index),
        }
    table = pd.DataFrame(columns)
    table["ratio"], table["ratio_low"], table["ratio_high"] = ratio_interval(
        errors_a=table["errors_mislabelled"],
        n_a=table["n_mislabelled"],
        errors_b=table["errors_clean"],
        n_b=table["n_clean"],
    )
    return with_rate_percent(table.reset_index())


# --- per-image summaries and their bootstrap ---------------------------------------------------------------


def changed_areas(predictions: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """[N] area under each image's changed indicator over sigma (trapezoid) divided by the sigma range: the
    fraction of the range where it is changed. Their mean is the area under the group's changed-fraction
    curve."""
    changed = (predictions != predictions[0]).astype(float)
    return np.trapezoid(changed, sigmas, axis=0) / (sigmas[-1] - sigmas[0])


def half_sigma(flipped: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """Sigma at which half the images have flipped, linearly interpolated on the grid; NaN if never.

    flipped: [..., S] fraction of images whose flip sigma is <= each grid sigma (0 at sigma 0).
    """
    reached = flipped >= 0.5
    after = np.maximum(reached.argmax(axis=-1), 1)[..., None]
    low, high = (np.take_along_axis(flipped, after - step, axis=-1)[..., 0] for step in (1, 0))
    with np.errstate(invalid="ignore", divide="ignore"):
        position = after[..., 0] - 1 + (0.5 - low) / (high - low)
    return np.where(reached.any(axis=-1), np.interp(position, np.arange(len(sigmas)), sigmas), np.nan)


@dataclass(frozen=True)
class Bootstrap:
    """A curve's summaries (see `summarise_images`) and their bootstrap replicates [B]."""

    n: int
    auc: float
    half_sigma: float
    auc_draws: np.ndarray
    half_sigma_draws: np.ndarray  # +inf where half is not reached


def summarise_images(
    *,
    positions: np.ndarray,
    areas: np.ndarray,
    sigmas: np.ndarray,
    n_bootstrap: int,
    rng: np.random.Generator,
) -> Bootstrap:
    """Area under the changed-fraction curve (mean of `areas`) and half-flip sigma of a group of images,
    with `n_bootstrap` nonparametric bootstrap replicates over images.

    Both summaries depend on an image only through its (flip position, area) pair, so drawing multinomial
    counts of the distinct pairs is the same resampling as drawing images with replacement, at a cost that
    does not grow with the number of images.
    """
    n, steps = len(areas), len(sigmas)
    pairs, counts = np.unique(np.c_[positions, areas], axis=0, return_counts=True)
    draws = rng.multinomial(n, counts / n, size=n_bootstrap)  # [B, U]
    by_position = np.eye(steps + 1)[pairs[:, 0].astype(int)]  # [U, S + 1]

    def halves(weights: np.ndarray) -> np.ndarray:
        return half_sigma(np.cumsum(weights @ by_position, axis=-1)[..., :steps] / n, sigmas)

    return Bootstrap(
        n=n,
        auc=float(areas.mean()),
        half_sigma=float(halves(counts)),
        auc_draws=draws @ pairs[:, 1] / n,
        half_sigma_draws=np.nan_to_num(halves(draws), nan=np.inf),
    )


def _interval(draws: np.ndarray) -> tuple[float, float, float]:
    """Percentile interval of bootstrap draws and the se it implies, (high - low) / 3.92; inf if unbounded."""
    low, high = np.quantile(draws, [0.025, 0.975], method="inverted_cdf")
    if np.isinf(high):  # more than 2.5 % of resamples never reach half: the interval is open above
        return float(low), float(high), np.inf
    return float(low), float(high), float((high - low) / (2 * Z95))


def _subsets(run: RunImages) -> list[tuple[str, str, np.ndarray]]:
    """(subset, group, mask [N]) of every non-empty image set of a run: each group ("all"), and the
    training groups restricted to images fit at sigma 0 ("fit")."""
    sets = [("all", group, run.group == group) for group in GROUPS]
    sets += [("fit", group, (run.group == group) & run.fit) for group in ("mislabelled", "clean")]
    return [(subset, group, mask) for subset, group, mask in sets if mask.any()]


def image_curves(study: Study) -> pd.DataFrame:
    """One row per run x subset x group x sigma: n images, `changed` (prediction differs from sigma 0's) and
    `flipped` (changed at this or any smaller sigma: the flip-sigma distribution), each with its fraction and
    Wilson interval. Subset "all" reproduces curves.csv's changed counts; "fit" is the gap-adjusted set."""
    frames = []
    for run in study.images:
        changed = run.predictions != run.predictions[0]  # [S, N]
        flipped = np.logical_or.accumulate(changed, axis=0)
        for subset, group, mask in _subsets(run):
            frame = pd.DataFrame(
                {"subset": subset, "group": group, "sigma": run.sigmas, "n": int(mask.sum())}
                | {"changed": changed[:, mask].sum(axis=1), "flipped": flipped[:, mask].sum(axis=1)}
            )
            frames.append(with_keys(run.keys, add_wilson_columns(frame, ("changed", "flipped"))))
    return with_rate_percent(pd.concat(frames, ignore_index=True))


def curve_summaries(study: Study, *, n_bootstrap: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Summaries of every curve, and the gap-adjusted comparison of every run.

    Returns (summaries, gap_adjusted). summaries: one row per run x subset x group x summary (subsets as in
    `image_curves`); summary "auc" is the area under the changed-fraction curve divided by the sigma range
    (a mean fraction), "half_sigma" the sigma (pixels) by which half the images have flipped, NaN and
    `censored` when never reached; each with its value, bootstrap percentile interval low/high and the
    standard error that interval implies. gap_adjusted: one row per run comparing the fit mislabelled with
    the fit clean images: their counts and flipped counts, the difference in auc (mislabelled - clean) with
    its bootstrap interval, and a log-rank test of their flip sigmas (`_gap_adjusted`).
    """
    summaries, comparisons = [], []
    for number, run in enumerate(study.images):
        positions, areas = flip_positions(run.predictions), changed_areas(run.predictions, run.sigmas)
        boots = {}
        for subset, group, mask in _subsets(run):
            rng = np.random.default_rng([seed, number, len(boots)])
            boot = summarise_images(
                positions=positions[mask],
                areas=areas[mask],
                sigmas=run.sigmas,
                n_bootstrap=n_bootstrap,
                rng=rng,
            )
            boots[subset, group] = boot
            for summary in SUMMARIES:
                value = getattr(boot, summary)
                low, high, se = _interval(getattr(boot, f"{summary}_draws"))
                row = {"subset": subset, "group": group, "n": boot.n, "summary": summary, "value": value}
                censored = bool(np.isnan(value))
                summaries.append(run.keys | row | {"low": low, "high": high, "se": se, "censored": censored})
        fit = (boots.get(("fit", "mislabelled")), boots.get(("fit", "clean")))
        comparisons.append({**run.keys, **_gap_adjusted(run, positions, *fit)})
    return with_rate_percent(pd.DataFrame(summaries)), with_rate_percent(pd.DataFrame(comparisons))


def _gap_adjusted(
    run: RunImages, positions: np.ndarray, mislabelled: Bootstrap | None, clean: Bootstrap | None
) -> dict[str, Any]:
    """Compare fit mislabelled with fit clean images of one run.

    The flip sigma is a time to event on the sigma axis; an image that never flips on the grid is
    right-censored at the largest sigma. The log-rank test (scipy.stats.logrank) compares the two flip-sigma
    distributions over the whole grid and handles the censoring and the many ties of a discrete grid; its
    statistic is > 0 when mislabelled images flip earlier than equal hazards predict.
    """
    steps, row, samples = len(run.sigmas), {}, {}
    for group in ("mislabelled", "clean"):
        flips = positions[(run.group == group) & run.fit]
        flipped = flips < steps
        row[f"n_{group}"], row[f"flipped_{group}"] = len(flips), int(flipped.sum())
        samples[group] = CensoredData(
            uncensored=run.sigmas[flips[flipped]], right=np.full(len(flips) - flipped.sum(), run.sigmas[-1])
        )
    if mislabelled is None or clean is None or row["flipped_mislabelled"] + row["flipped_clean"] == 0:
        return row | dict.fromkeys(
            ("auc_difference", "auc_difference_low", "auc_difference_high", "logrank_statistic", "p_value"),
            np.nan,
        )
    low, high, _ = _interval(mislabelled.auc_draws - clean.auc_draws)
    test = logrank(samples["mislabelled"], samples["clean"])
    return row | {
        "auc_difference": mislabelled.auc - clean.auc,
        "auc_difference_low": low,
        "auc_difference_high": high,
        "logrank_statistic": float(test.statistic),
        "p_value": float(test.pvalue),
    }


def percent(rate: float) -> str:
    """0.0111 -> '1.11 %'."""
    return f"{100 * rate:.3g} %"


# --- training and everything together ----------------------------------------------------------------------


def training(runs: pd.DataFrame) -> pd.DataFrame:
    """Per run: the schedule, stopping epoch, first epoch at the target, final learning rate, whether the
    target was reached, and the final accuracies (runs.csv's; columns a run of an older overparam lacks are
    left out)."""
    present = [column for column in TRAINING_COLUMNS if column in runs]
    return with_rate_percent(runs[[*KEYS, "n_mislabelled", *present]])


def analyse(study: Study, *, n_bootstrap: int = 1000, seed: int = 0) -> dict[str, pd.DataFrame]:
    """Every analysis table of a study, by the name of its CSV file in OUT/analysis/."""
    from overparam import across_rates, smoothness  # both build on this module's tables

    summaries, gap_adjusted = curve_summaries(study, n_bootstrap=n_bootstrap, seed=seed)
    gap_at_zero = starting_gap(study.curves)
    values = across_rates.run_values(summaries, gap_adjusted, gap_at_zero)
    roughness = smoothness.roughness_test(study.images, seed=seed)
    return {
        "training": training(study.runs),
        "starting_gap": gap_at_zero,
        "image_curves": image_curves(study),
        "summaries": summaries,
        "gap_adjusted": gap_adjusted,
        "run_values": values,
        "rate_summaries": across_rates.rate_summaries(values),
        "jumps": across_rates.jumps(values),
        "transitions": across_rates.transitions(values, runs=study.runs, seed=seed),
        "gap_overall": across_rates.gap_overall(values),
        "roughness": roughness,
        "roughness_by_rate": smoothness.roughness_by_rate(roughness),
    }
