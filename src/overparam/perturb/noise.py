"""Additive Gaussian noise, level = standard deviation in pixel units (pixels in [0, 1]), and the keyed
randomness every random perturbation draws from.

Keyed randomness: an image's random numbers are a function of (run seed, split, the image's position in its
original split, stream) and nothing else, so they are the same whatever the batch layout, the subset probed,
the device and the machine. They come from Philox4x32-10 (Salmon et al. 2011, the counter-based generator of
cuRAND and JAX), computed in numpy integer arithmetic for every requested image at once: counter = (block of
4 pixels, image index, CRC-32 of the split, CRC-32 of the stream name), key = the run's seed (64 bits), one
Philox call per 4 pixels. No generator state is carried from image to image, so there are no blocks to
generate and discard and no per-image Python loop (tests check the published known-answer vectors).
"""

import zlib
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from overparam.models import INFERENCE_BATCH_SIZE, autocast, padded_logits
from overparam.perturb import Perturbation, ProbeInputs, _rows, register

NOISE_STREAM = "noise"
_MASK = 0xFFFFFFFF
_MULTIPLIERS = (np.uint64(0xD2511F53), np.uint64(0xCD9E8D57))
_WEYL = (0x9E3779B9, 0xBB67AE85)


def philox4x32(counter: Sequence[np.ndarray], key: tuple[int, int], rounds: int = 10) -> np.ndarray:
    """Philox4x32-`rounds` of counters given as 4 broadcastable arrays of 32-bit words (any integer dtype,
    values in [0, 2^32)) under the 2-word `key` -> uint32 [4, *shape]: the counters' 4 output words."""
    c0, c1, c2, c3 = (np.asarray(word).astype(np.uint64) for word in np.broadcast_arrays(*counter))
    k0, k1 = key[0] & _MASK, key[1] & _MASK
    mask, shift = np.uint64(_MASK), np.uint64(32)
    for number in range(rounds):
        if number:
            k0, k1 = (k0 + _WEYL[0]) & _MASK, (k1 + _WEYL[1]) & _MASK
        p0, p1 = c0 * _MULTIPLIERS[0], c2 * _MULTIPLIERS[1]  # exact: 32 x 32 bits fit 64
        c0, c1, c2, c3 = (
            (p1 >> shift) ^ c1 ^ np.uint64(k0),
            p1 & mask,
            (p0 >> shift) ^ c3 ^ np.uint64(k1),
            p0 & mask,
        )
    return np.stack([c0, c1, c2, c3]).astype(np.uint32)


def keyed_words(
    seed: int, split: str, indices: torch.Tensor | np.ndarray, count: int, stream: str
) -> np.ndarray:
    """`count` random 32-bit words per image -> uint32 [N, count], a function of (seed, split, the image's
    original index, stream) alone: row i is the same whichever other images are asked for with it."""
    index = np.asarray(indices.cpu() if isinstance(indices, torch.Tensor) else indices, dtype=np.int64)
    if index.ndim != 1 or (index.size and (index.min() < 0 or index.max() > _MASK)):
        raise ValueError("indices must be a 1-d array of original positions in [0, 2^32)")
    blocks = -(-count // 4)
    words = philox4x32(
        (
            np.arange(blocks, dtype=np.uint64)[None, :],
            index.astype(np.uint64)[:, None],
            np.uint64(zlib.crc32(split.encode())),
            np.uint64(zlib.crc32(stream.encode())),
        ),
        (seed & _MASK, (seed >> 32) & _MASK),
    )  # [4, N, blocks]
    return words.transpose(1, 2, 0).reshape(len(index), 4 * blocks)[:, :count]


def keyed_normal(
    seed: int,
    split: str,
    indices: torch.Tensor | np.ndarray,
    shape: Sequence[int],
    stream: str = NOISE_STREAM,
) -> torch.Tensor:
    """Unit-normal fields float32 [N, *shape] on the CPU, one per image, keyed as `keyed_words`.

    Box-Muller in float64 on pairs of 32-bit uniforms (w + 1/2) / 2^32 in (0, 1), rounded to float32: the
    integers are exact everywhere; the float64 log, cos and sin of another CPU's math library could differ
    in their last bit, which survives the rounding to float32 for about one value in 2^28."""
    size = int(np.prod(shape))
    words = keyed_words(seed, split, indices, 2 * -(-size // 2), stream).astype(np.float64)
    uniform = (words + 0.5) / 2.0**32
    radius = np.sqrt(-2.0 * np.log(uniform[:, 0::2]))
    angle = 2.0 * np.pi * uniform[:, 1::2]
    normal = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=-1).reshape(len(words), -1)
    return torch.from_numpy(normal[:, :size].astype(np.float32)).view(len(words), *shape)


def keyed_uniform(
    seed: int, split: str, indices: torch.Tensor | np.ndarray, shape: Sequence[int], stream: str
) -> torch.Tensor:
    """Uniform fields float32 [N, *shape] in (0, 1) on the CPU, keyed as `keyed_words`: the top 23 bits w of
    each word as (w + 1/2) / 2^23, exact in float32 on every machine."""
    size = int(np.prod(shape))
    words = (keyed_words(seed, split, indices, size, stream) >> np.uint32(9)).astype(np.float64)
    return torch.from_numpy(((words + 0.5) / 2.0**23).astype(np.float32)).view(-1, *shape)


def classify(
    model: nn.Module, pixels: torch.Tensor, *, batch_size: int, precision: str = "fp32"
) -> torch.Tensor:
    """Eval-mode (the caller's) predictions [M] int64 of float images [M, H, W] in [0, 1], in inference-mode
    passes of exactly `batch_size` (padded, as `models.predict`), on the images' device."""
    found = []
    with torch.inference_mode(), autocast(precision, pixels.device):
        for start in range(0, len(pixels), batch_size):
            logits = padded_logits(model, pixels[start : start + batch_size, None], size=batch_size)
            found.append(logits.argmax(dim=1))
    return torch.cat(found) if found else torch.zeros(0, dtype=torch.int64, device=pixels.device)


def along_rays(pixels: torch.Tensor, directions: torch.Tensor, levels: Sequence[float]) -> torch.Tensor:
    """clip(x + level * d, 0, 1) for float images x [B, H, W], directions d [B, H, W] and every level ->
    [len(levels), B, H, W]. `d * level` and `+ x` are separate, correctly rounded operations (no fused
    multiply-add), so the result is bitwise the same on every device; level 0 is x itself."""
    return torch.stack([(directions * level).add_(pixels).clamp_(0, 1) for level in levels])


def predict_rays(
    pixels: torch.Tensor,
    directions: torch.Tensor,
    levels: Sequence[float],
    inputs: ProbeInputs,
    batch_size: int,
) -> torch.Tensor:
    """Predictions [len(levels), B] of `along_rays`: all levels of the B images side by side, in passes of
    exactly `batch_size` (an image's prediction does not depend on what shares its pass)."""
    candidates = along_rays(pixels, directions, levels)
    found = classify(
        inputs.model, candidates.flatten(0, 1), batch_size=batch_size, precision=inputs.precision
    )
    return found.view(len(levels), len(pixels))


def predict_along_directions(
    images: torch.Tensor,
    levels: Sequence[float],
    inputs: ProbeInputs,
    direction: Callable[[torch.Tensor, ProbeInputs], torch.Tensor],
    *,
    batch_size: int,
    progress: bool,
    desc: str,
) -> np.ndarray:
    """uint8 images [N, H, W] at every level of clip(x + level * d, 0, 1) -> [len(levels), N] int64: per
    block of `batch_size` images, `direction(pixels, rows)` gives d [B, H, W] once (noise: the keyed fields;
    FGSM: the gradient signs), then all levels are predicted side by side (`predict_rays`)."""
    if not len(levels) or not len(images):
        return np.zeros((len(levels), len(images)), dtype=np.int64)
    model, found = inputs.model, []
    was_training = model.training
    model.eval()
    for start in tqdm(
        range(0, len(images), batch_size), desc=desc, unit="batch", disable=not progress, leave=False
    ):
        part = slice(start, start + batch_size)
        pixels = images[part].float().div_(255)
        rows = _rows(inputs, part)
        found.append(predict_rays(pixels, direction(pixels, rows), levels, rows, batch_size).cpu())
    model.train(was_training)
    return torch.cat(found, dim=1).numpy()


@register
class Noise(Perturbation):
    """Additive Gaussian noise: x' = clip(x + level * z, 0, 1), level = standard deviation in pixel units
    (pixels in [0, 1]), z [H, W] one unit-normal field per image keyed by (run seed, split, original index)
    (`keyed_normal`), the same at every level.

    Common random numbers: an image's noisy versions all lie on one ray from it, x + level * z (before
    clipping), so its flip level (the smallest level at which its prediction changes) is a property of one
    direction rather than of a fresh draw at every level, and its curve is not re-randomised from level to
    level: curves are monotone in the usual case, and differences between models or levels are not drowned
    in independent sampling noise.

    Default levels 0 to 1 in steps of 0.05: the noise is clipped to the pixel range, and at a standard
    deviation of 1 (the whole range) most of a digit's pixels are dominated by the noise, while the models
    still classify most images at 0.5; 21 levels, each one forward pass per image."""

    name = "noise"
    level_name = "noise standard deviation (pixel units, pixels in [0, 1])"
    default_levels = tuple(round(0.05 * i, 6) for i in range(21))

    def field(self, inputs: ProbeInputs, shape: Sequence[int], device: torch.device) -> torch.Tensor:
        """The unit-normal fields z [N, *shape] of the images of `inputs`, on `device`."""
        return keyed_normal(inputs.seed, inputs.split, inputs.indices, shape).to(device)

    def perturb(self, images: torch.Tensor, level: float, inputs: ProbeInputs) -> torch.Tensor:
        """float images [N, H, W] in [0, 1] -> clip(x + level * z, 0, 1) [N, H, W]."""
        return along_rays(images, self.field(inputs, images.shape[1:], images.device), [level])[0]

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
        """uint8 images [N, H, W] at every level -> [len(levels), N] int64: each block of `batch_size`
        images draws its fields once, then all its levels are predicted side by side (passes of exactly
        `batch_size`)."""
        return predict_along_directions(
            images,
            levels,
            inputs,
            lambda pixels, rows: self.field(rows, pixels.shape[1:], pixels.device),
            batch_size=batch_size,
            progress=progress,
            desc=desc,
        )
