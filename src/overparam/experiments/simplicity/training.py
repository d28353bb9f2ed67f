"""Train many networks at once, each from its own draw of the prior, by Adam on minibatches until it makes
no error on its training labels; what each has learned is read off at the end of the epoch in which it first
gets every training label right (Mingard et al.'s protocol: stop at zero training error). Networks that are
done leave the batch; Adam is written out so that its state leaves with them."""

from dataclasses import dataclass

import torch
from torch.nn.functional import binary_cross_entropy_with_logits
from tqdm.auto import tqdm

from overparam.experiments.simplicity.network import Architecture, forward, sample_parameters


@dataclass(frozen=True)
class Training:
    """Adam (betas 0.9, 0.999, eps 1e-8) on the binary cross-entropy, minibatches of `batch_size` drawn
    without replacement each epoch, for at most `max_epochs` epochs."""

    learning_rate: float = 1e-3
    batch_size: int = 8
    max_epochs: int = 2000


def train_to_zero_error(
    *,
    architecture: Architecture,
    training: Training,
    cube: torch.Tensor,
    train_index: torch.Tensor,
    labels: torch.Tensor,
    generator: torch.Generator,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Train R networks, network r on labels[r] [P] (0/1) of the inputs cube[train_index] (cube
    [2**n_bits, n_bits] every input, train_index [P]). Returns the learned outputs on the cube
    [R, 2**n_bits] bool (at its last epoch for a network that never got there) and the epoch each reached
    zero training error [R] int64 (-1: not within max_epochs)."""
    device, (count, size) = cube.device, labels.shape
    points = cube[train_index]
    parameters = sample_parameters(architecture, count=count, generator=generator, device=device)
    moments = [torch.zeros_like(p) for p in parameters]
    squares = [torch.zeros_like(p) for p in parameters]
    learned = torch.zeros(count, cube.shape[0], dtype=torch.bool, device=device)
    epochs = torch.full((count,), -1, dtype=torch.int64, device=device)
    active = torch.arange(count, device=device)
    targets = labels.float()
    step = 0
    for epoch in tqdm(range(1, training.max_epochs + 1), desc="epochs", disable=not progress, leave=False):
        order = torch.argsort(torch.rand(len(active), size, generator=generator, device=device), dim=1)
        for start in range(0, size, training.batch_size):
            batch = order[:, start : start + training.batch_size]
            for parameter in parameters:
                parameter.requires_grad_(True)
            values = forward(parameters, points[batch])
            loss = binary_cross_entropy_with_logits(values, targets.gather(1, batch), reduction="none")
            gradients = torch.autograd.grad(loss.mean(dim=1).sum(), parameters)
            step += 1
            with torch.no_grad():
                parameters = [
                    _adam(p.detach(), g, m, v, step=step, rate=training.learning_rate)
                    for p, g, m, v in zip(parameters, gradients, moments, squares, strict=True)
                ]
        with torch.no_grad():
            outputs = forward(parameters, cube) > 0
        learned[active] = outputs
        done = outputs[:, train_index].eq(targets.bool()).all(dim=1)
        epochs[active[done]] = epoch
        keep = ~done
        if not keep.any():
            break
        active, targets = active[keep], targets[keep]
        parameters = [p[keep].detach() for p in parameters]
        moments, squares = [m[keep] for m in moments], [v[keep] for v in squares]
    return learned, epochs


def _adam(
    parameter: torch.Tensor,
    gradient: torch.Tensor,
    moment: torch.Tensor,
    square: torch.Tensor,
    *,
    step: int,
    rate: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> torch.Tensor:
    """One Adam update (moment and square updated in place); returns the new parameter."""
    moment.mul_(betas[0]).add_(gradient, alpha=1 - betas[0])
    square.mul_(betas[1]).addcmul_(gradient, gradient, value=1 - betas[1])
    corrected = (square / (1 - betas[1] ** step)).sqrt_().add_(eps)
    return parameter - rate * (moment / (1 - betas[0] ** step)) / corrected
