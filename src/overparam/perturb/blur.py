"""Whole-image Gaussian blur (PROTOCOL step 4), level = sigma in pixels: the paper's perturbation."""

from collections.abc import Sequence

import numpy as np
import torch

from overparam.blur import blur, blur_matrices
from overparam.models import INFERENCE_BATCH_SIZE
from overparam.perturb import Perturbation, ProbeInputs, register
from overparam.probe import predict_under_blur


@register
class Blur(Perturbation):
    name = "blur"
    level_name = "blur sigma (pixels)"
    default_levels = tuple(round(0.1 * i, 6) for i in range(51))  # 0 to 5 in steps of 0.1

    def perturb(self, images: torch.Tensor, level: float, inputs: ProbeInputs) -> torch.Tensor:
        return blur(images, blur_matrices([level], images.shape[-1], device=images.device))[0]

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
        """Every sigma of a chunk of images in one pass (`probe.predict_under_blur`)."""
        return predict_under_blur(
            inputs.model,
            images,
            levels,
            batch_size=batch_size,
            precision=inputs.precision,
            progress=progress,
            desc=desc,
        )
