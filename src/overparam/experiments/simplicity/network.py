"""Many small fully connected ReLU networks at once: parameters carry a leading network dimension, so that
sampling the prior and training from fresh initialisations are batched matrix products.

The prior is Valle-Perez et al.'s (guillefix/simpbias-tools, sample_nets_gaussian.py): every weight of a
layer with fan-in m is N(0, sigma_w**2 / m), every bias N(0, sigma_b**2), sigma_w = sigma_b = 1; the
output is 1 where the last layer's value is > 0 (their sign(), with sign(0) = 0 read as 0)."""

from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import torch

Parameters = list[torch.Tensor]  # per layer: weight [R, fan_in, fan_out], then bias [R, 1, fan_out]


@dataclass(frozen=True)
class Architecture:
    """n_bits inputs, hidden ReLU layers of the given widths, one output; Gaussian prior scales."""

    n_bits: int = 7
    hidden: tuple[int, ...] = (40, 40)
    sigma_w: float = 1.0
    sigma_b: float = 1.0

    def widths(self) -> list[int]:
        return [self.n_bits, *self.hidden, 1]


def batch_generator(*, seed: int, index: int, device: torch.device) -> torch.Generator:
    """A generator for batch `index` of a stream seeded by `seed`: each batch draws the same numbers however
    the stream is cut into chunks or resumed."""
    state = int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0]) >> 1
    return torch.Generator(device=device).manual_seed(state)


def sample_parameters(
    architecture: Architecture, *, count: int, generator: torch.Generator, device: torch.device
) -> Parameters:
    """`count` draws from the prior: [W1, b1, W2, b2, ...], W [count, fan_in, fan_out], b [count, 1,
    fan_out]."""
    widths = architecture.widths()
    total = sum(fan_in * fan_out + fan_out for fan_in, fan_out in pairwise(widths))
    flat = torch.randn(count, total, generator=generator, device=device)
    parameters, offset = [], 0
    for fan_in, fan_out in pairwise(widths):
        weight = flat[:, offset : offset + fan_in * fan_out].reshape(count, fan_in, fan_out)
        offset += fan_in * fan_out
        bias = flat[:, offset : offset + fan_out].reshape(count, 1, fan_out)
        offset += fan_out
        parameters += [weight * (architecture.sigma_w / fan_in**0.5), bias * architecture.sigma_b]
    return parameters


def forward(parameters: Parameters, points: torch.Tensor) -> torch.Tensor:
    """Output values [R, P] of R networks on points [P, n_bits] (shared) or [R, P, n_bits] (each its own)."""
    count = parameters[0].shape[0]
    hidden = points.expand(count, *points.shape[-2:]) if points.dim() == 2 else points
    for layer in range(0, len(parameters), 2):
        weight, bias = parameters[layer], parameters[layer + 1]
        hidden = torch.baddbmm(bias, hidden, weight)
        if layer + 2 < len(parameters):
            hidden = hidden.clamp_(min=0)
    return hidden.squeeze(-1)
