"""What the gradient attacks (fgsm, pgd) share: the gradient of the loss of the model's own prediction with
respect to the input pixels, in padded batches as every other forward pass."""

import torch
from torch import nn

from overparam.models import autocast, padded_logits


def require_gradients(name: str) -> None:
    """A clear error for an attack called under `torch.inference_mode()` (no gradient can be taken there)."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError(f"{name} takes input gradients: call its predict outside torch.inference_mode()")


def loss_direction(logits: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """d CE(logits, reference) / d logits of each row, divided by 1 - p_reference > 0: softmax over the
    non-reference classes minus onehot(reference), float32 [n, classes].

    A positive per-image factor leaves the sign of the input gradient unchanged (each image's input gradient
    is linear in its own logit gradient), but the plain CE gradient p - onehot underflows to exactly zero
    once the reference's margin exceeds ~100 logits in float32, and with it the attack's direction; this
    form never vanishes."""
    masked = logits.float().scatter(1, reference[:, None], float("-inf"))
    return torch.softmax(masked, dim=1).scatter(1, reference[:, None], -1.0)


def input_gradient(
    model: nn.Module,
    pixels: torch.Tensor,
    reference: torch.Tensor,
    *,
    batch_size: int,
    precision: str = "fp32",
) -> tuple[torch.Tensor, torch.Tensor]:
    """For float images x [n, H, W] in [0, 1] and classes [n] int64 (the model's own unperturbed
    predictions): (the gradient [n, H, W] of the cross-entropy of `reference`, rescaled per image as in
    `loss_direction`, with respect to x; the model's predictions [n] int64 of x). The model is used as
    given (the caller puts it in eval mode); passes of exactly `batch_size` inputs, zero images padding
    them (they take no part in the loss, so no part in any real image's gradient). Gradients go to x alone
    (`torch.autograd.grad`): the parameters' .grad stay untouched."""
    require_gradients("an attack")
    gradients, predictions = [], []
    with torch.enable_grad():
        for start in range(0, len(pixels), batch_size):
            x = pixels[start : start + batch_size].detach().clone().requires_grad_(True)
            # clone(): `reference` may be an inference tensor (models.predict), which autograd cannot save
            target = reference[start : start + batch_size].clone()
            with autocast(precision, x.device):
                logits = padded_logits(model, x[:, None], size=batch_size)
            weights = loss_direction(logits.detach(), target).to(logits.dtype)
            (gradient,) = torch.autograd.grad(logits, x, grad_outputs=weights)
            gradients.append(gradient)
            predictions.append(logits.detach().argmax(dim=1))
    if not gradients:
        return torch.zeros_like(pixels), torch.zeros(0, dtype=torch.int64, device=pixels.device)
    return torch.cat(gradients), torch.cat(predictions)
