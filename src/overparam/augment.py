"""Data augmentation of training batches (`--augment`): random translations by up to `SHIFT` pixels with zero
fill (padding by `SHIFT`, then a random crop of the original size, as the usual Fashion-MNIST and CIFAR
recipes), and for "shift-flip" also a horizontal flip with probability 1/2 (clothes are left-right symmetric;
digits are not, so MNIST takes "shift" at most).

An image's draw is a function of (seed, epoch, its position in the training data) alone, drawn for the whole
epoch at once, so a training that resumes or starts mid-epoch (rewinding) sees the same images. Batches stay
tensors on the device: one gather per batch, no per-image Python."""

import torch
from torch.nn import functional as F

from overparam.mislabel import keyed_generator

AUGMENTATIONS = ("none", "shift", "shift-flip")
SHIFT = 2  # pixels, at most, in each direction


def epoch_draws(method: str, *, seed: int, epoch: int, n: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The augmentation of every training image in one epoch: (offsets [n, 2] int64 in 0..2 SHIFT, the crop's
    top-left corner in the padded image, (row, column); flips [n] bool), on the CPU; None for "none"."""
    if method == "none":
        return None
    if method not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {method!r}; choose one of {', '.join(AUGMENTATIONS)}")
    generator = torch.Generator().manual_seed(int(keyed_generator("augment", seed, epoch).integers(2**62)))
    offsets = torch.randint(0, 2 * SHIFT + 1, (n, 2), generator=generator)
    if method == "shift":
        return offsets, torch.zeros(n, dtype=torch.bool)
    return offsets, torch.rand(n, generator=generator) < 0.5


def augment_batch(images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """images [B, H, W] (any dtype), offsets [B, 2] and flips [B] on the images' device -> [B, H, W]: each
    image shifted (zero fill) so that its crop starts at `offsets` in the image padded by SHIFT, then
    mirrored left-right where `flips`."""
    batch, height, width = images.shape
    padded = F.pad(images, (SHIFT, SHIFT, SHIFT, SHIFT))
    rows = offsets[:, :1] + torch.arange(height, device=images.device)  # [B, H]
    columns = offsets[:, 1:] + torch.arange(width, device=images.device)  # [B, W]
    which = torch.arange(batch, device=images.device)[:, None, None]
    shifted = padded[which, rows[:, :, None], columns[:, None]]
    return torch.where(flips[:, None, None], shifted.flip(-1), shifted)
