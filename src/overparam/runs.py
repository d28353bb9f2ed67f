"""A run as every step sees it: both splits of its data set on the step's device (loaded once per process),
the run's choice of images and mislabels (`PreparedRun`), its training tensors, and its model, fresh or
trained. The shared ground of the core's steps (execution.py) and of every experiment's.
"""

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from overparam.config import ConfigError, RunConfig
from overparam.data import NORMALIZATION, load_split, resolve_data_dir
from overparam.mislabel import ChoiceError, Mislabelling, class_balanced_subset, keyed_generator, mislabel
from overparam.models import build_model
from overparam.store.files import RunPaths, load_checked, run_paths
from overparam.store.steps import StepContext
from overparam.train import TrainingData


@dataclass(frozen=True)
class Splits:
    """Whole train and test splits on the compute device: images [N, 28, 28] uint8, labels [N] int64."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


@functools.lru_cache(maxsize=2)
def load_splits(*, dataset: str, data_dir: str | None, download: bool, device: str) -> Splits:
    """Both splits of `dataset` on `device`, loaded once per process."""
    folder = resolve_data_dir(data_dir)
    tensors = []
    for split in ("train", "test"):
        images, labels = load_split(dataset=dataset, split=split, data_dir=folder, download=download)
        tensors += [images.to(device), labels.to(device)]
    return Splits(*tensors)


@dataclass(frozen=True)
class PreparedRun:
    """A run's choice of images: positions in the original splits, and its mislabelling."""

    run: RunConfig
    paths: RunPaths
    train_index: np.ndarray  # [n_train] int64
    test_index: np.ndarray  # [n_test] int64
    true_labels: np.ndarray  # [n_train] int64
    mislabelling: Mislabelling  # positions index train_index

    @property
    def assigned_labels(self) -> np.ndarray:
        return self.mislabelling.apply(self.true_labels)

    @property
    def mislabelled(self) -> np.ndarray:
        mask = np.zeros(len(self.train_index), dtype=bool)
        mask[self.mislabelling.positions] = True
        return mask

    def probed(self) -> np.ndarray:
        """Sorted positions (into train_index) of the training images the probe sees: all of them, or with
        `clean_sample` every mislabelled image and a fixed random sample of that many clean ones."""
        run, everything = self.run, np.arange(len(self.train_index))
        clean = everything[~self.mislabelled]
        if run.clean_sample == 0 or run.clean_sample >= len(clean):
            return everything
        rng = keyed_generator(
            "clean-sample", run.dataset, run.train_size, run.rate, run.seed, run.clean_sample
        )
        return np.sort(
            np.r_[self.mislabelling.positions, rng.choice(clean, size=run.clean_sample, replace=False)]
        )


def prepare(run: RunConfig, splits: Splits, store: Path) -> PreparedRun:
    """Choose the run's images and mislabels; data-dependent setting errors surface here, before training."""
    train_labels, test_labels = splits.train_labels.cpu().numpy(), splits.test_labels.cpu().numpy()
    key = {"dataset": run.dataset, "seed": run.seed}
    try:
        train_index = class_balanced_subset(labels=train_labels, size=run.train_size, split="train", **key)
        test_index = class_balanced_subset(labels=test_labels, size=run.test_size, split="test", **key)
        mislabelling = mislabel(labels=train_labels[train_index], rate=run.rate, **key)
    except ChoiceError as error:
        raise ConfigError(str(error)) from None
    return PreparedRun(
        run=run,
        paths=run_paths(store, run_id=run.run_id(), probe_id=run.probe_id()),
        train_index=train_index,
        test_index=test_index,
        true_labels=train_labels[train_index],
        mislabelling=mislabelling,
    )


def new_model(run: RunConfig, *, seed: int | None = None) -> torch.nn.Module:
    """The run's untrained model: its architecture behind its data set's normalisation, initialised from the
    run's seed (or from `seed`, for another initialisation of the same architecture)."""
    mean, std = NORMALIZATION[run.dataset]
    torch.manual_seed(run.seed if seed is None else seed)
    return build_model(name=run.model, width=run.width, mean=mean, std=std)


def trained_model(run: RunConfig, paths: RunPaths, device: torch.device) -> torch.nn.Module:
    """The run's model with the weights training saved, on `device` (uncompiled)."""
    model = new_model(run).to(device)
    model.load_state_dict(load_checked(paths.model, map_location=device))
    return model


def training_data(prepared: PreparedRun, splits: Splits) -> TrainingData:
    """The run's training and test tensors on the splits' device."""
    device = splits.train_images.device
    train_index = torch.as_tensor(prepared.train_index, device=device)
    test_index = torch.as_tensor(prepared.test_index, device=device)
    return TrainingData(
        images=splits.train_images[train_index],
        assigned_labels=torch.as_tensor(prepared.assigned_labels, device=device),
        mislabelled=torch.as_tensor(prepared.mislabelled, device=device),
        test_images=splits.test_images[test_index],
        test_labels=splits.test_labels[test_index],
    )


def prepared_run(run: RunConfig, context: StepContext) -> tuple[PreparedRun, Splits]:
    """A step's view of its run: the run's choice of images, and both splits on the step's device."""
    options = context.options
    splits = load_splits(
        dataset=run.dataset, data_dir=options.data_dir, download=options.download, device=str(context.device)
    )
    return prepare(run, splits, context.store), splits
