"""Adversarial training (Madry et al. 2018; Wong et al. 2020): each training batch is replaced by its
L-infinity adversarial examples against the assigned labels before the update.

- `pgd`: a random start uniform in [-epsilon, epsilon], then `steps` signed-gradient steps of 2.5 epsilon /
  steps, each projected onto the epsilon ball around the image and onto the pixel range [0, 1];
- `fgsm`: FGSM from a random start ("fast is better than free"): one step of 1.25 epsilon.

The examples are crafted with the model in eval mode, so crafting passes leave the batch-norm statistics
alone, and the update then runs in train mode as ordinary training does. The random starts come from a
generator of their own keyed by (seed, epoch), so the data order and every other random draw are those of
standard training, and a run resumed at an epoch boundary repeats them exactly.
"""

import torch
from torch import nn
from torch.nn import functional as F

from overparam.mislabel import keyed_generator
from overparam.models import autocast

METHODS = ("none", "pgd", "fgsm")
STEP_FACTOR = {
    "pgd": 2.5,
    "fgsm": 1.25,
}  # step size / epsilon: per step for pgd (divided by steps), once for fgsm


def start_generator(seed: int, epoch: int) -> torch.Generator:
    """The random starts of one epoch: a CPU generator keyed by (seed, epoch), drawn batch after batch."""
    return torch.Generator().manual_seed(int(keyed_generator("adversarial", seed, epoch).integers(2**62)))


def adversarial_batch(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    method: str,
    epsilon: float,
    steps: int,
    generator: torch.Generator,
    precision: str = "fp32",
) -> torch.Tensor:
    """Adversarial examples [B, 1, H, W] in [0, 1] of `images` [B, 1, H, W] (in [0, 1]) against `labels`
    [B]: `method` "pgd" or "fgsm" (see the module), L-infinity budget `epsilon` in pixel units."""
    was_training = model.training
    model.eval()
    noise = torch.rand(images.shape, generator=generator).to(images.device)
    adversarial = (images + epsilon * (2 * noise - 1)).clamp(0, 1)
    count = steps if method == "pgd" else 1
    step = STEP_FACTOR[method] * epsilon / count
    for _ in range(count):
        adversarial.requires_grad_(True)
        with torch.enable_grad(), autocast(precision, images.device):
            loss = F.cross_entropy(model(adversarial), labels, reduction="sum")
        (gradient,) = torch.autograd.grad(loss, adversarial)
        moved = adversarial.detach() + step * gradient.sign()
        adversarial = torch.minimum(torch.maximum(moved, images - epsilon), images + epsilon).clamp(0, 1)
    model.train(was_training)
    return adversarial.detach()
