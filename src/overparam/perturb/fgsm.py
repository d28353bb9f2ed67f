"""Fast Gradient Sign Method (Goodfellow et al. 2015), L-infinity, level = epsilon in pixel units (pixels in
[0, 1]), attacking the model's own unperturbed prediction."""

from collections.abc import Sequence

import numpy as np
import torch

from overparam.models import INFERENCE_BATCH_SIZE
from overparam.perturb import Perturbation, ProbeInputs, register
from overparam.perturb.attack import input_gradient, require_gradients
from overparam.perturb.noise import along_rays, predict_along_directions


@register
class FGSM(Perturbation):
    """x' = clip(x + epsilon * sign(grad_x CE(model(x), reference)), 0, 1), epsilon in pixel units, with
    `reference` the model's own prediction of the unperturbed x: the attack moves every pixel by epsilon
    in the direction that most lowers the confidence in what the model sees, and a flip is a change of that
    classification. (The gradient is rescaled per image so that it cannot underflow for confident images:
    `attack.loss_direction`; its sign is CE's.) Gradients are taken in eval mode, with respect to the input
    only.

    The direction sign(grad) does not depend on epsilon, so `predict` takes one gradient per image and then
    one forward pass per level: exact at every level, an image's attacked versions on one ray as the noise's.

    Default levels 0 to 0.3 in steps of 0.02, as PGD's: 0.3 is the standard L-infinity budget on MNIST
    (Madry et al. 2018), at which undefended models are broken."""

    name = "fgsm"
    level_name = "FGSM epsilon (L-inf, pixel units, pixels in [0, 1])"
    default_levels = tuple(round(0.02 * i, 6) for i in range(16))
    needs_gradients = True

    def direction(
        self, pixels: torch.Tensor, inputs: ProbeInputs, batch_size: int = INFERENCE_BATCH_SIZE
    ) -> torch.Tensor:
        """sign(grad) [N, H, W] in {-1, 0, 1} for float images [N, H, W] (the model in eval mode)."""
        gradient, _ = input_gradient(
            inputs.model, pixels, inputs.reference, batch_size=batch_size, precision=inputs.precision
        )
        return gradient.sign()

    def perturb(self, images: torch.Tensor, level: float, inputs: ProbeInputs) -> torch.Tensor:
        """float images [N, H, W] in [0, 1] -> the attacked images [N, H, W] at epsilon `level`."""
        was_training = inputs.model.training
        inputs.model.eval()
        attacked = along_rays(images, self.direction(images, inputs), [level])[0]
        inputs.model.train(was_training)
        return attacked

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
        """uint8 images [N, H, W] at every epsilon -> [len(levels), N] int64: per block of `batch_size`
        images one gradient pass, then all levels side by side in passes of exactly `batch_size`."""
        require_gradients(self.name)
        return predict_along_directions(
            images,
            levels,
            inputs,
            lambda pixels, rows: self.direction(pixels, rows, batch_size),
            batch_size=batch_size,
            progress=progress,
            desc=desc,
        )
