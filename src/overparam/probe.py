"""The probe (PROTOCOL step 5): every image's prediction at every level of a perturbation, summarised per
group; blur's fast path (every sigma of a chunk of images in one pass)."""

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from overparam.blur import blur, blur_matrices
from overparam.models import INFERENCE_BATCH_SIZE, autocast, padded_logits
from overparam.stats import add_wilson_columns

GROUPS = ("mislabelled", "clean", "test")
COUNTS = ("changed", "agree_assigned", "agree_true")


@torch.inference_mode()
def predict_under_blur(
    model: nn.Module,
    images: torch.Tensor,
    sigmas: Sequence[float],
    *,
    batch_size: int = INFERENCE_BATCH_SIZE,
    precision: str = "fp32",
    progress: bool = True,
    desc: str = "probe",
) -> np.ndarray:
    """Eval-mode predictions of uint8 images [N, H, H] blurred at every sigma -> [len(sigmas), N] int64.

    Each forward pass holds all sigmas of `batch_size // S` images, padded to `batch_size` (as `predict`'s,
    so sigma 0 here predicts as an evaluation does). The blur is fp32 at any `precision`; only the model's
    forward runs under autocast.
    """
    was_training = model.training
    model.eval()
    matrices = blur_matrices(sigmas, images.shape[-1], device=images.device)
    chunk = max(1, batch_size // len(sigmas))
    size = max(batch_size, len(sigmas))  # more sigmas than that: one image per pass
    predictions = []
    for start in tqdm(
        range(0, len(images), chunk), desc=desc, unit="chunk", disable=not progress, leave=False
    ):
        blurred = blur(images[start : start + chunk].float().div_(255), matrices)  # [S, B, H, H]
        with autocast(precision, images.device):
            logits = padded_logits(model, blurred.reshape(-1, 1, *blurred.shape[-2:]), size=size)
        predictions.append(logits.argmax(dim=1).view(len(sigmas), -1).cpu())
    model.train(was_training)
    return torch.cat(predictions, dim=1).numpy()


@torch.inference_mode()
def identity_sigmas(
    sigmas: Sequence[float],
    images: Sequence[torch.Tensor],
    *,
    normalize: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int = 4096,
) -> tuple[float, ...]:
    """The sigmas > 0 of the grid whose blur leaves every image of `images` (uint8 [N, H, H] tensors) bitwise
    unchanged as the network sees it, after `normalize` (the model's first layer): at such a sigma every
    prediction must equal sigma 0's.

    Only a float32 blur matrix with an exact unit diagonal can qualify. Its off-diagonal weights need not
    be 0: at sigma 0.1 they are 1.9e-22, which leave every lit pixel as it is (far below half its last
    digit) and lift a black one from 0 to at most about 1e-21, which normalisation's subtraction of the
    mean rounds away. So the images are compared after `normalize`, not before."""
    matrices = blur_matrices(sigmas, images[0].shape[-1], device=images[0].device)
    found = []
    for sigma, matrix in zip(sigmas, matrices, strict=True):
        if sigma == 0 or not bool((matrix.diagonal() == 1).all()):
            continue
        if all(
            torch.equal(normalize(blur(pixels, matrix[None])[0]), normalize(pixels))
            for split in images
            for start in range(0, len(split), batch_size)
            for pixels in [split[start : start + batch_size].float().div_(255)]
        ):
            found.append(float(sigma))
    return tuple(found)


def flip_positions(predictions: np.ndarray) -> np.ndarray:
    """[N] grid position of each image's first changed prediction ([S, N] input); S when it never changes."""
    changed = predictions != predictions[0]
    return np.where(changed.any(axis=0), changed.argmax(axis=0), len(predictions))


def flip_levels(predictions: np.ndarray, levels: Sequence[float]) -> np.ndarray:
    """Per image [N], the smallest level whose prediction differs from level 0's; NaN if none on the grid."""
    return np.r_[np.asarray(levels, dtype=float), np.nan][flip_positions(predictions)]


def curves(
    *,
    predictions: np.ndarray,
    levels: Sequence[float],
    true_labels: np.ndarray,
    assigned_labels: np.ndarray,
    groups: dict[str, np.ndarray],
) -> pd.DataFrame:
    """One row per (group, level): n and the counts `changed` (prediction differs from level 0's),
    `agree_assigned`, `agree_true`, each with `<count>_fraction`, `<count>_low`, `<count>_high` (95 % Wilson).

    predictions: [L, N]; labels: [N]; groups: name -> boolean mask [N] over the same images.
    """
    outcomes = {
        "changed": predictions != predictions[0],
        "agree_assigned": predictions == assigned_labels,
        "agree_true": predictions == true_labels,
    }
    frames = []
    for group, mask in groups.items():
        frame = pd.DataFrame({"group": group, "level": np.asarray(levels, dtype=float), "n": int(mask.sum())})
        for name, outcome in outcomes.items():
            frame[name] = outcome[:, mask].sum(axis=1)
        frames.append(add_wilson_columns(frame, COUNTS))
    return pd.concat(frames, ignore_index=True)
