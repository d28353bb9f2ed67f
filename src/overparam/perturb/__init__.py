"""Perturbations: ways of moving an image to "nearby inputs", registered by name.

A perturbation maps uint8 images [N, H, W] and a level to perturbed images in [0, 1] (level 0 is the
identity) and says what its level means. The probe predicts every image at every level of a perturbation's
grid; a new perturbation is one module in this package that subclasses `Perturbation` and is decorated with
`@register`: its probe, tables, analysis and report section follow from the registry.

Most perturbations only implement `perturb`; `Perturbation.predict` batches it. Those with a faster way to
predict every level at once override `predict` (blur: every sigma as two matrix products; attacks: each
image's smallest flipping epsilon by a search, instead of one attack per level).
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from overparam.models import INFERENCE_BATCH_SIZE, autocast, padded_logits


@dataclass(frozen=True)
class ProbeInputs:
    """What a perturbation may use besides the images: all tensors on the images' device."""

    model: nn.Module  # in eval mode; what the probe predicts with
    reference: torch.Tensor  # [N] int64: the model's own predictions of the unperturbed images
    indices: torch.Tensor  # [N] int64: each image's position in its original split, the key of its randomness
    split: str  # "train" or "test": with `indices`, names each image uniquely
    seed: int  # the run's seed
    precision: str = "fp32"  # "fp32" or "bf16": the model's forward runs under this autocast


class Perturbation:
    """One kind of perturbation. Subclasses set the class attributes and implement `perturb` (or
    `predict`)."""

    name: ClassVar[str]  # the registry key, as on the command line
    level_name: ClassVar[str]  # what a level is, with its unit: the x-axis label of every figure
    default_levels: ClassVar[tuple[float, ...]]  # ascending, from 0
    needs_gradients: ClassVar[bool] = False  # attacks: the probe must not run under inference mode

    def settings(self) -> dict[str, Any]:
        """Everything besides the levels that changes this perturbation's results (an attack's steps, ...):
        part of the probe's identity."""
        return {}

    def perturb(self, images: torch.Tensor, level: float, inputs: ProbeInputs) -> torch.Tensor:
        """images [N, H, W] float in [0, 1] (rows of `inputs`) -> perturbed images [N, H, W] in [0, 1]."""
        raise NotImplementedError

    def predict(
        self,
        images: torch.Tensor,
        levels: Sequence[float],
        inputs: ProbeInputs,
        *,
        batch_size: int = INFERENCE_BATCH_SIZE,
        progress: bool = False,
        desc: str = "probe",
    ) -> np.ndarray:
        """Eval-mode predictions of uint8 images [N, H, W] at every level -> [len(levels), N] int64. Level 0
        is the images themselves; every forward pass is a padded batch of exactly `batch_size` (as
        `models.predict`), so an image's prediction does not depend on its batch."""
        rows = self._outputs(images, levels, inputs, batch_size, progress, desc, lambda x: x.argmax(dim=1))
        return torch.stack(rows).numpy()

    def probabilities(
        self,
        images: torch.Tensor,
        levels: Sequence[float],
        inputs: ProbeInputs,
        *,
        batch_size: int = INFERENCE_BATCH_SIZE,
    ) -> np.ndarray:
        """Eval-mode softmax probabilities (computed in float32, kept as float16) of uint8 images [N, H, W]
        perturbed by `perturb` at each level -> [len(levels), N, classes]. Their argmax is the prediction
        `predict` makes at that level for perturbations that `predict` by perturbing (blur, noise); an
        attack's are those of its attack at that level, whose prediction its search for the smallest
        flipping level may not repeat exactly."""

        def softmax(logits: torch.Tensor) -> torch.Tensor:
            return logits.float().softmax(dim=1).half()

        return torch.stack(self._outputs(images, levels, inputs, batch_size, False, "", softmax)).numpy()

    def _outputs(
        self,
        images: torch.Tensor,
        levels: Sequence[float],
        inputs: ProbeInputs,
        batch_size: int,
        progress: bool,
        desc: str,
        keep: Callable[[torch.Tensor], torch.Tensor],
    ) -> list[torch.Tensor]:
        """`keep(logits)` of every image at every level, a [N, ...] CPU tensor per level."""
        model, found = inputs.model, []
        was_training = model.training
        model.eval()
        for level in tqdm(levels, desc=desc, unit="level", disable=not progress, leave=False):
            row = []
            for start in range(0, len(images), batch_size):
                part = slice(start, start + batch_size)
                pixels = images[part].float().div_(255)
                if level != 0:
                    pixels = self.perturb(pixels, level, _rows(inputs, part))
                with torch.inference_mode(), autocast(inputs.precision, images.device):
                    logits = padded_logits(model, pixels[:, None], size=batch_size)
                row.append(keep(logits).cpu())
            found.append(torch.cat(row))
        model.train(was_training)
        return found


def _rows(inputs: ProbeInputs, part: slice) -> ProbeInputs:
    return ProbeInputs(
        model=inputs.model,
        reference=inputs.reference[part],
        indices=inputs.indices[part],
        split=inputs.split,
        seed=inputs.seed,
        precision=inputs.precision,
    )


PERTURBATIONS: dict[str, Perturbation] = {}


def register(kind: type[Perturbation]) -> type[Perturbation]:
    """Class decorator: make `kind` available by its name."""
    if kind.name in PERTURBATIONS:
        raise ValueError(f"perturbation {kind.name!r} is registered twice")
    if not kind.default_levels or kind.default_levels[0] != 0:
        raise ValueError(f"{kind.name}: default levels must start at 0, got {kind.default_levels}")
    PERTURBATIONS[kind.name] = kind()
    return kind


def get(name: str) -> Perturbation:
    """The registered perturbation `name`; KeyError naming the valid choices."""
    if name not in PERTURBATIONS:
        raise KeyError(f"unknown perturbation {name!r}; choose from {', '.join(PERTURBATIONS)}")
    return PERTURBATIONS[name]


from overparam.perturb import blur, fgsm, noise, pgd  # noqa: E402, F401  the built-in ones register themselves
