"""Whole-image Gaussian blur (PROTOCOL step 4) for a batch of images and a grid of sigmas at once.

`B_s(I)(x) = sum_y G_s(x - y) I(y) / sum_y G_s(x - y)` with both sums over every pixel of the image: the
kernel is never truncated and no padding enters. G is separable and so is its normaliser, hence
`B_s(I) = R_s I R_s^T` with the row-normalised matrix `R_s[x, y] = G_s(x - y) / sum_y' G_s(x - y')`.
"""

from collections.abc import Sequence

import torch


def blur_matrices(
    sigmas: Sequence[float],
    size: int,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Row-normalised Gaussian matrices `R_s` [len(sigmas), size, size]; sigma in pixels, 0 = identity."""
    positions = torch.arange(size, dtype=torch.float64)
    squared_distance = (positions[:, None] - positions[None, :]) ** 2
    matrices = []
    for sigma in sigmas:
        if sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {sigma}")
        if sigma == 0:
            matrices.append(torch.eye(size, dtype=torch.float64))
            continue
        # The diagonal weight exp(0) = 1 keeps every row sum >= 1: tiny sigmas never divide by zero.
        weights = torch.exp(-squared_distance / (2 * sigma**2))
        matrices.append(weights / weights.sum(dim=1, keepdim=True))
    return torch.stack(matrices).to(device=device, dtype=dtype)


def blur(images: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """Blur float images [B, H, W] with every matrix of [S, H, H] (square images) -> [S, B, H, W]."""
    rows = matrices[:, None]  # [S, 1, H, H]
    return rows @ images[None] @ rows.transpose(-1, -2)
