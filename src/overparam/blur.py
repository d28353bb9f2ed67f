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
    """Blur float images [B, H, H] with every matrix of [S, H, H] -> [S, B, H, H] (a view).

    `R I R^T` for every (sigma, image) as two large products with the images side by side, rather than
    S x B products of H x H matrices: the same sums of the same products (bitwise the same on CPU,
    tests/test_blur.py) at 3-4x the speed, since BLAS is slow on H x H blocks and on outputs H wide.
    """
    n_sigmas, n_images, size = len(matrices), len(images), images.shape[-1]
    side_by_side = images.permute(1, 0, 2).reshape(size, n_images * size)  # [y, (b, x)] = I_b[y, x]
    left = (matrices.reshape(n_sigmas * size, size) @ side_by_side).view(n_sigmas, size, n_images, size)
    # left[s, i, b, x] = (R_s I_b)[i, x]; then R_s (R_s I_b)^T = (R_s I_b R_s^T)^T
    transposed = left.permute(0, 3, 2, 1).reshape(n_sigmas, size, n_images * size)  # [s, x, (b, i)]
    return torch.bmm(matrices, transposed).view(n_sigmas, size, n_images, size).permute(0, 2, 3, 1)
