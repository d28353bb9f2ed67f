"""What training a sparse network adds to the fixed training loop (train.py's callbacks): pruned weights
held at zero, and the growing penalty of the dual lottery ticket's information extrusion."""

import math
from dataclasses import dataclass

import torch
from torch import nn

from overparam.experiments.lottery.masks import Mask, apply_mask, prunable
from overparam.train import Callback


@dataclass(frozen=True)
class KeepMask(Callback):
    """The weights `mask` removes stay 0: zeroed again after every update. open_lth's PrunedModel zeroes
    them before every forward pass instead; every forward pass sees the same weights either way."""

    mask: Mask

    def after_update(self, model: nn.Module, iteration: int) -> None:
        apply_mask(model, self.mask)


@dataclass(frozen=True)
class GrowingPenalty(Callback):
    """Information extrusion (Bai et al. 2022, after Wang et al. 2021's growing regularisation, as their
    code does it): the gradient of lambda / 2 x the squared weights outside `mask` is added to every update,
    lambda growing by `increment` every `interval` iterations (from the first) up to `ceiling`."""

    mask: Mask
    increment: float
    interval: int
    ceiling: float

    def coefficient(self, iteration: int) -> float:
        return min(self.ceiling, self.increment * (iteration // self.interval + 1))

    def iterations(self) -> int:
        """How long extrusion lasts: until lambda has been at its ceiling for one interval."""
        return math.ceil(self.ceiling / self.increment - 1e-9) * self.interval

    @torch.no_grad()
    def before_update(self, model: nn.Module, iteration: int) -> None:
        coefficient = self.coefficient(iteration)
        for name, weight in prunable(model).items():
            if weight.grad is not None:
                weight.grad.add_(weight * (~self.mask[name]).to(weight.dtype), alpha=coefficient)
