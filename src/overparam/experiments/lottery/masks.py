"""Pruning masks: which weights of a network are kept. The prunable weights are those of every convolution and
linear layer (batch norm and biases are always kept), as in open_lth; magnitude pruning removes a fraction of
the remaining weights with the smallest magnitudes over all of them at once (global), the output layer at half
the rate on its own (Frankle and Carbin 2019)."""

import torch
from torch import nn

Mask = dict[str, torch.Tensor]  # parameter name -> bool tensor of its shape, True = kept


def prunable(model: nn.Module) -> dict[str, nn.Parameter]:
    """The weights of `model`'s convolution and linear layers by parameter name, in the model's order."""
    return {
        f"{name}.weight": module.weight
        for name, module in model.named_modules()
        if isinstance(module, nn.Conv2d | nn.Linear)
    }


def output_layer(model: nn.Module) -> str:
    """The parameter name of the last linear layer's weight: the classifier."""
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear)][-1] + ".weight"


def full_mask(model: nn.Module) -> Mask:
    return {name: torch.ones_like(weight, dtype=torch.bool) for name, weight in prunable(model).items()}


def _prune_smallest(magnitudes: torch.Tensor, kept: torch.Tensor, fraction: float) -> torch.Tensor:
    """`kept` with round(fraction * kept.sum()) more entries removed, those of smallest `magnitudes` among
    the kept (ties broken by position, so the result is deterministic)."""
    count = round(fraction * int(kept.sum()))
    if count == 0:
        return kept.clone()
    flat = torch.where(kept.flatten(), magnitudes.flatten().float(), torch.inf)
    order = torch.sort(flat, stable=True).indices[:count]
    pruned = kept.flatten().clone()
    pruned[order] = False
    return pruned.view_as(kept)


def magnitude_mask(model: nn.Module, *, fraction: float, mask: Mask | None = None) -> Mask:
    """The mask after pruning `fraction` of the weights `mask` keeps (default: all) by magnitude: globally
    over every prunable layer but the output layer, and the output layer's own weights at `fraction / 2`."""
    if not 0 <= fraction < 1:
        raise ValueError(f"a pruning fraction is in [0, 1), got {fraction}")
    weights, kept = prunable(model), mask or full_mask(model)
    output = output_layer(model)
    hidden = [name for name in weights if name != output]
    together = torch.cat([weights[name].detach().abs().flatten() for name in hidden])
    joined = _prune_smallest(together, torch.cat([kept[name].flatten() for name in hidden]), fraction)
    pruned, start = {}, 0
    for name in hidden:
        size = weights[name].numel()
        pruned[name] = joined[start : start + size].view_as(weights[name])
        start += size
    pruned[output] = _prune_smallest(weights[output].detach().abs(), kept[output], fraction / 2)
    return {name: pruned[name] for name in weights}


@torch.no_grad()
def apply_mask(model: nn.Module, mask: Mask) -> None:
    """Zero the weights `mask` removes, in place."""
    for name, weight in prunable(model).items():
        weight.mul_(mask[name].to(weight.dtype))


def remaining(mask: Mask) -> float:
    """The fraction of prunable weights `mask` keeps."""
    return sum(int(kept.sum()) for kept in mask.values()) / sum(kept.numel() for kept in mask.values())


def _permutation(n: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randperm(n, generator=generator)


def layerwise_random_mask(mask: Mask, *, generator: torch.Generator) -> Mask:
    """A random mask with `mask`'s number of kept weights in every layer (open_lth's random pruning,
    "layerwise"): each layer's mask shuffled."""
    shuffled = {}
    for name, kept in mask.items():
        order = _permutation(kept.numel(), generator).to(kept.device)
        shuffled[name] = kept.flatten()[order].view_as(kept)
    return shuffled


def uniform_random_mask(model: nn.Module, *, keep: float, generator: torch.Generator) -> Mask:
    """A random mask keeping round(`keep` x size) weights of every prunable layer, the output layer too (the
    dual lottery ticket's random sparse network, Bai et al. 2022)."""
    mask = {}
    for name, weight in prunable(model).items():
        kept = torch.zeros(weight.numel(), dtype=torch.bool)
        kept[_permutation(weight.numel(), generator)[: round(keep * weight.numel())]] = True
        mask[name] = kept.view_as(weight).to(weight.device)
    return mask


def imp_remaining(model: nn.Module, *, fraction: float, rounds: int) -> float:
    """The fraction of prunable weights `rounds` rounds of `magnitude_mask` at `fraction` keep: counts only
    (which weights does not matter), so known before any training."""
    sizes = {name: weight.numel() for name, weight in prunable(model).items()}
    output = output_layer(model)
    hidden, last = sum(size for name, size in sizes.items() if name != output), sizes[output]
    for _ in range(rounds):
        hidden -= round(fraction * hidden)
        last -= round(fraction / 2 * last)
    return (hidden + last) / sum(sizes.values())
