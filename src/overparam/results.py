"""A finished study as read from its output folder (README, "Outputs"): its tables, in the current format
also when written by an older overparam, and the saved predictions of every probed run and perturbation.
Every experiment's analysis and report starts from a `Study`; the key columns here name a run in every table.

Tables written before perturbations (a `sigma` column, `flip_sigma`, no `perturbation`, predictions.npz with
`sigmas`) are read as perturbation "blur".
"""

import hashlib
import io
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from overparam.store.files import read_json, read_verified, study_table

# A family is the runs whose rates and seeds are compared: one study variant (a sweep's grid point, README
# "Sweeps"; "all" otherwise) of one data set, model, width and training-set size.
FAMILY = ("variant", "dataset", "model", "width", "train_size")


KEYS = (*FAMILY, "rate", "seed")


PERTURBATION = "perturbation"  # the column naming a perturbation (overparam.perturb), after the run keys


LEGACY_PERTURBATION = "blur"  # of tables written before there were several


@dataclass(frozen=True)
class RunImages:
    """Every image of one probed run under one perturbation, training images first, then test images."""

    keys: dict[str, Any]  # the run's KEYS
    perturbation: str  # its name in overparam.perturb
    levels: np.ndarray  # [L] in the perturbation's unit, ascending, levels[0] == 0 (the unperturbed image)
    predictions: np.ndarray  # [L, N] predicted class
    group: np.ndarray  # [N] "mislabelled", "clean" or "test"
    index: np.ndarray  # [N] position in the original split (train or test)
    true_label: np.ndarray  # [N]
    assigned_label: np.ndarray  # [N] (the true label for test images)

    @property
    def fit(self) -> np.ndarray:
        """[N] bool: the level-0 (unperturbed) prediction equals the assigned label."""
        return self.predictions[0] == self.assigned_label


@dataclass(frozen=True)
class Study:
    """The tables of an output folder (README, "Outputs") and the saved predictions of every probed run and
    perturbation. `curves` and `flips` are in the current format (`level`, `flip_level`, `perturbation`),
    also when read from older tables."""

    out: Path
    config: dict[str, Any]
    runs: pd.DataFrame
    metrics: pd.DataFrame
    curves: pd.DataFrame
    flips: pd.DataFrame
    images: list[RunImages]  # one per probed run x perturbation, run by run

    @property
    def perturbations(self) -> list[str]:
        """The perturbations of the probed runs, in the order the tables first name them."""
        return list(dict.fromkeys(run.perturbation for run in self.images))


def load_study(out: Path) -> Study:
    """Read OUT/config.json, runs.csv, metrics.csv, curves.csv, flips.csv and each probe's predictions.npz.

    A run x perturbation without predictions on the study's grid of that perturbation is left out of
    `images`. Raises FileNotFoundError naming what is missing when the folder holds no probed study.
    """
    required = [out / "config.json", *(study_table(out, name) for name in ("runs", "curves", "flips"))]
    missing = [path.name for path in required if not path.exists()]
    if missing:
        raise FileNotFoundError(f"{out} has no {', '.join(missing)}: run `overparam reproduce` first")
    config = read_json(out / "config.json")
    runs, curves, flips = (
        _with_variant(pd.read_csv(study_table(out, name))) for name in ("runs", "curves", "flips")
    )
    curves = _current_format(curves, {"sigma": "level"})
    flips = _current_format(flips, {"flip_sigma": "flip_level"})
    metrics_table = study_table(out, "metrics")
    metrics = _with_variant(pd.read_csv(metrics_table)) if metrics_table.exists() else pd.DataFrame()
    images = []
    by_run = [*KEYS, PERTURBATION]
    flips_by_run = dict(iter(flips.groupby(by_run, sort=False)))
    curves_by_run = dict(iter(curves.groupby(by_run, sort=False)))
    perturbations = list(pd.unique(curves[PERTURBATION]))
    for run in runs.itertuples(index=False):
        keys = {key: getattr(run, key) for key in KEYS}
        for perturbation in perturbations:
            run_flips = flips_by_run.get((*keys.values(), perturbation))
            run_curves = curves_by_run.get((*keys.values(), perturbation))
            if run_flips is None or run_curves is None:
                continue
            probe_ids = run_flips["probe_id"].dropna().unique() if "probe_id" in run_flips else []
            if len(probe_ids) == 1:
                probe_id = probe_ids[0]
            else:  # tables written before flips.csv named it: runs.csv named the blur probe, if anything
                probe_id = getattr(run, "probe_id", None) if perturbation == LEGACY_PERTURBATION else None
            saved = _saved_predictions(
                out / "runs" / str(run.run_id),
                probe_id,
                perturbation=perturbation,
                levels=np.sort(run_curves["level"].unique()),
                flips=run_flips,
            )
            if saved is not None:
                images.append(_run_images(keys, perturbation, saved, run_flips))
    if not images:
        raise FileNotFoundError(f"no run in {out / 'runs'} has a predictions.npz on the levels of curves.csv")
    return Study(
        out=out, config=config, runs=runs, metrics=metrics, curves=curves, flips=flips, images=images
    )


def _with_variant(table: pd.DataFrame) -> pd.DataFrame:
    """`table` with a text `variant` column ("all" in the tables of a study written before variants)."""
    variant = table["variant"].astype(str) if "variant" in table else "all"
    return table.assign(variant=variant)


def _current_format(table: pd.DataFrame, renamed: dict[str, str]) -> pd.DataFrame:
    """curves.csv or flips.csv in the current format: a table written before perturbations has `renamed`'s
    old column names (sigma, flip_sigma) and no perturbation column; its perturbation was blur."""
    table = table.rename(columns={old: new for old, new in renamed.items() if new not in table})
    if PERTURBATION not in table:
        table.insert(table.columns.get_loc("seed") + 1, PERTURBATION, LEGACY_PERTURBATION)
    return table.astype({PERTURBATION: str})


def _saved_predictions(
    run_dir: Path, probe_id: str | None, *, perturbation: str, levels: np.ndarray, flips: pd.DataFrame
) -> dict[str, np.ndarray] | None:
    """The arrays of this study's probe of the run under `perturbation`, with `levels` (older files:
    `sigmas`), read from bytes checked against probe.json. The probe is `probe_id`: flips.csv names each
    perturbation's, and runs.csv named the blur probe's before there were several. Tables that name none:
    the probe of this perturbation on the run's grid and of the images in its flips.csv (a run in a shared
    store may hold probes of other grids, other perturbations or other clean samples)."""
    if isinstance(probe_id, str) and probe_id:
        record = run_dir / probe_id / "probe.json"
        if not record.exists():
            return None
        with np.load(io.BytesIO(read_verified(record, "predictions.npz"))) as saved:
            return _levels_named(dict(saved))
    images = {split: np.sort(rows["index"].to_numpy()) for split, rows in flips.groupby("split")}
    for path in sorted(run_dir.glob("probe-*/predictions.npz")):
        if _probed(path.parent / "probe.json") not in (None, perturbation):
            continue
        with np.load(path) as saved:
            found = _levels_named(dict(saved))
        if np.array_equal(found["levels"], levels) and all(
            np.array_equal(np.sort(found[f"{split}_index"]), images.get(split)) for split in ("train", "test")
        ):
            return found
    return None


def _probed(record: Path) -> str | None:
    """The perturbation a probe.json records (one written before there were several: blur); None when it
    cannot be read."""
    try:
        return str(read_json(record).get(PERTURBATION, LEGACY_PERTURBATION))
    except (OSError, ValueError, AttributeError):
        return None


def _levels_named(saved: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A predictions.npz's arrays with the grid as `levels` (files written before perturbations: `sigmas`)."""
    if "levels" not in saved and "sigmas" in saved:
        saved["levels"] = saved.pop("sigmas")
    return saved


def _run_images(
    keys: dict[str, Any], perturbation: str, saved: dict[str, np.ndarray], flips: pd.DataFrame
) -> RunImages:
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
        perturbation=perturbation,
        levels=saved["levels"].astype(float),
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


def run_keys(run: RunImages) -> dict[str, Any]:
    """The key columns of a run x perturbation: the run's KEYS, then `perturbation`."""
    return run.keys | {PERTURBATION: run.perturbation}


def numbered(images: Sequence[RunImages]) -> Iterator[tuple[list[int], RunImages]]:
    """Each run x perturbation with the start of the key of its random streams: [its position among the
    runs of its perturbation, then a number of the perturbation's name (none for blur)]. So one
    perturbation's random draws do not depend on which others were probed, and blur's are those of the
    tables written before there were several."""
    counts: Counter[str] = Counter()
    for run in images:
        name = run.perturbation
        code = [] if name == LEGACY_PERTURBATION else [int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)]
        yield [counts[name], *code], run
        counts[name] += 1


def percent(rate: float) -> str:
    """0.0111 -> '1.11 %'."""
    return f"{100 * rate:.3g} %"
