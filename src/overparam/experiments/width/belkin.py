"""The faithful first step: Belkin, Hsu, Ma and Mandal (2019, PNAS), "Reconciling modern machine-learning
practice and the classical bias-variance trade-off", random Fourier features (RFF) on an MNIST subset.

n class-balanced training images (pixels in [0, 1], flattened to d = 784), one-hot targets [n, 10], features
phi_j(x) = sqrt(2 / N) cos(<v_j, x> + b_j) with v_j ~ N(0, sigma^-2 I_d) and b_j ~ U[0, 2 pi) (the real form
of their exp(i <v_j, x>), approximating the Gaussian kernel of bandwidth sigma), and the minimum-norm
least-squares fit of the N coefficients per class. The interpolation threshold is N = n: each of the 10
outputs is n equations in N unknowns.

Feature sets are nested: the first N columns of one draw, so the sweep is one pass over the features. The
predictions of a minimum-norm fit do not depend on a common scale of the features, so sqrt(2 / N) enters
only the coefficient norm. For N <= n the fit is `torch.linalg.lstsq` on the features (gelsy: QR with column
pivoting, the minimum-norm solution of a rank-deficient system); for N > n it is phi^T (phi phi^T)^-1 Y,
through the n x n Gram matrix (Cholesky; the pseudo-inverse by eigendecomposition if that fails).
"""

import io
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
import torch

from overparam.mislabel import class_balanced_subset
from overparam.runs import load_splits
from overparam.store.files import file_record, read_verified, write_csv
from overparam.store.steps import Step, StepContext, content_id

CHUNK = 1024  # feature columns drawn at once


def one_hot(labels: torch.Tensor, n_classes: int = 10) -> torch.Tensor:
    """[n] int64 -> [n, n_classes] float64."""
    return torch.nn.functional.one_hot(labels, n_classes).double()


def _scores(predictions: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(squared loss: mean over images of the squared distance [n, 10] to the one-hot target, zero-one
    error of the largest output)."""
    loss = ((predictions - one_hot(labels, predictions.shape[1])) ** 2).sum(dim=1).mean().item()
    return loss, (predictions.argmax(dim=1) != labels).double().mean().item()


def _gram_solve(gram: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """gram^+ targets for a symmetric positive semi-definite `gram` [n, n] and `targets` [n, k]."""
    factor, info = torch.linalg.cholesky_ex(gram)
    if int(info) == 0:
        return torch.cholesky_solve(targets, factor)
    values, vectors = torch.linalg.eigh(gram)
    keep = values > values.max() * gram.shape[0] * torch.finfo(gram.dtype).eps
    inverse = torch.where(keep, 1 / torch.where(keep, values, 1), 0)
    return vectors @ (inverse[:, None] * (vectors.T @ targets))


def rff_sweep(
    *,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    feature_counts: Sequence[int],
    sigma: float,
    seed: int,
) -> pd.DataFrame:
    """The minimum-norm RFF fit at each number of features N in `feature_counts` (ascending), features
    nested. Images [n, d] float64 in [0, 1], labels [n] int64.

    Returns one row per N: n_features, n_train, n_features / n_train, train and test squared loss and
    zero-one error, and the coefficients' Frobenius norm (features scaled by sqrt(2 / N)).
    """
    counts = sorted(int(count) for count in feature_counts)
    n, d = train_images.shape
    targets = one_hot(train_labels)
    generator = torch.Generator().manual_seed(seed)
    below = [count for count in counts if count <= n]
    on = {"dtype": torch.float64, "device": train_images.device}
    kept_train = torch.empty(n, max(below, default=0), **on)
    kept_test = torch.empty(len(test_images), max(below, default=0), **on)
    gram, cross = torch.zeros(n, n, **on), torch.zeros(len(test_images), n, **on)
    driver = "gelsy" if train_images.device.type == "cpu" else None  # CUDA has only gels (full rank: N <= n)
    rows, done = [], 0
    for count in counts:
        while done < count:
            width = min(CHUNK, count - done)
            # drawn on the CPU: the same features on every device
            directions = (torch.randn(d, width, generator=generator, dtype=torch.float64) / sigma).to(**on)
            phases = (torch.rand(width, generator=generator, dtype=torch.float64) * 2 * math.pi).to(**on)
            train_features = torch.cos(train_images @ directions + phases)
            test_features = torch.cos(test_images @ directions + phases)
            if done < kept_train.shape[1]:
                stop = min(done + width, kept_train.shape[1])
                kept_train[:, done:stop] = train_features[:, : stop - done]
                kept_test[:, done:stop] = test_features[:, : stop - done]
            gram.addmm_(train_features, train_features.T)
            cross.addmm_(test_features, train_features.T)
            done += width
        if count <= n:
            solution = torch.linalg.lstsq(kept_train[:, :count], targets, driver=driver).solution
            train_predictions = kept_train[:, :count] @ solution
            test_predictions = kept_test[:, :count] @ solution
            norm_squared = (count / 2) * float((solution**2).sum())
        else:
            dual = _gram_solve(gram, targets)
            train_predictions, test_predictions = gram @ dual, cross @ dual
            norm_squared = (count / 2) * float((targets * dual).sum())
        train_loss, train_error = _scores(train_predictions, train_labels)
        test_loss, test_error = _scores(test_predictions, test_labels)
        rows.append(
            {"n_features": count, "n_train": n, "features_per_image": count / n}
            | {"train_loss": train_loss, "train_error": train_error}
            | {"test_loss": test_loss, "test_error": test_error, "norm": math.sqrt(max(norm_squared, 0.0))}
        )
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class BelkinSettings:
    """The RFF reproduction: `n_train` and `n_test` class-balanced images of `dataset` (chosen by `seed`,
    which also draws the features), the numbers of features, the Gaussian kernel's bandwidth `sigma`
    (pixels in [0, 1])."""

    dataset: str
    n_train: int
    n_test: int
    feature_counts: tuple[int, ...]
    sigma: float
    seed: int


@dataclass(frozen=True)
class BelkinStep(Step):
    """One RFF sweep (`rff_sweep`) of the run store: `belkin-rff-<hash of the settings>`, table belkin.csv."""

    settings: BelkinSettings
    kind: ClassVar[str] = "belkin-rff"

    def step_id(self) -> str:
        return content_id(self.kind, asdict(self.settings))

    def compute(self, context: StepContext) -> dict[str, Any]:
        settings, options = self.settings, context.options
        splits = load_splits(
            dataset=settings.dataset, data_dir=options.data_dir, download=options.download, device="cpu"
        )  # chosen on the CPU, fitted on the step's device (float64: the fit near N = n is ill-conditioned)
        chosen = {}
        for split, size in (("train", settings.n_train), ("test", settings.n_test)):
            images, labels = getattr(splits, f"{split}_images"), getattr(splits, f"{split}_labels")
            index = class_balanced_subset(
                labels=labels.numpy(), size=size, dataset=settings.dataset, split=split, seed=settings.seed
            )
            index = torch.as_tensor(index)
            chosen[split] = (
                (images[index].flatten(1).double() / 255).to(context.device),
                labels[index].to(context.device),
            )
        table = rff_sweep(
            train_images=chosen["train"][0],
            train_labels=chosen["train"][1],
            test_images=chosen["test"][0],
            test_labels=chosen["test"][1],
            feature_counts=settings.feature_counts,
            sigma=settings.sigma,
            seed=settings.seed,
        )
        table.insert(0, "dataset", settings.dataset)
        table.insert(1, "seed", settings.seed)
        path = context.folder / "belkin.csv"
        write_csv(table, path)
        return file_record([path])

    def table(self, store: Path) -> pd.DataFrame:
        """The sweep's rows (belkin.csv), checked against the record."""
        return pd.read_csv(io.BytesIO(read_verified(self.record(store), "belkin.csv")))


def peak(table: pd.DataFrame, *, column: str = "test_loss") -> dict[str, float]:
    """Where `column` of one sweep (`rff_sweep`'s rows) is largest: the number of features, N / n there and
    the value, beside the smallest and largest N's values."""
    ordered = table.sort_values("n_features")
    top = ordered.loc[ordered[column].idxmax()]
    return {
        "n_features": int(top["n_features"]),
        "features_per_image": float(top["features_per_image"]),
        "value": float(top[column]),
        "first": float(ordered[column].iloc[0]),
        "last": float(ordered[column].iloc[-1]),
    }


def default_counts(n_train: int) -> tuple[int, ...]:
    """N / n from 0.1 to 10, denser around the threshold N = n."""
    ratios = (0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 1.0, 1.05, 1.1, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0)
    return tuple(sorted({max(1, round(ratio * n_train)) for ratio in ratios}))
