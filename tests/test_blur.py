import numpy as np
import pytest
import torch

from overparam.blur import blur, blur_matrices


def direct_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """PROTOCOL step 4 literally: for every pixel x, a double sum over every pixel y of the image."""
    height, width = image.shape
    ys, xs = np.mgrid[0:height, 0:width]
    out = np.empty_like(image, dtype=np.float64)
    for i in range(height):
        for j in range(width):
            if sigma == 0:
                weights = ((ys == i) & (xs == j)).astype(float)
            else:
                weights = np.exp(-((ys - i) ** 2 + (xs - j) ** 2) / (2 * sigma**2))
            out[i, j] = (weights * image).sum() / weights.sum()
    return out


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(3, 28, 28, generator=torch.Generator().manual_seed(0))


SIGMAS = (0.0, 0.3, 0.7, 1.3, 5.0, 50.0)


def test_matches_the_direct_double_sum(images: torch.Tensor) -> None:
    blurred = blur(images, blur_matrices(SIGMAS, 28))
    assert blurred.shape == (len(SIGMAS), 3, 28, 28)
    for s, sigma in enumerate(SIGMAS):
        for b in range(len(images)):
            expected = direct_blur(images[b].double().numpy(), sigma)
            np.testing.assert_allclose(blurred[s, b].numpy(), expected, atol=1e-5, rtol=0)


def test_sigma_zero_is_the_identity(images: torch.Tensor) -> None:
    assert torch.equal(blur(images, blur_matrices([0.0], 28))[0], images)


def test_large_sigma_tends_to_the_flat_image_mean(images: torch.Tensor) -> None:
    flat = blur(images, blur_matrices([1e4], 28))[0]
    means = images.mean(dim=(1, 2), keepdim=True).expand_as(images)
    torch.testing.assert_close(flat, means, atol=1e-6, rtol=0)


def test_blurred_pixels_stay_within_the_image_range(images: torch.Tensor) -> None:
    blurred = blur(images, blur_matrices(SIGMAS, 28))
    assert (
        blurred.min() >= images.min() - 1e-6 and blurred.max() <= images.max() + 1e-6
    )  # convex combinations


def test_rows_are_normalised_and_tiny_sigmas_are_finite() -> None:
    matrices = blur_matrices([1e-3, 0.3, 2.0], 28, dtype=torch.float64)
    torch.testing.assert_close(matrices.sum(dim=-1), torch.ones(3, 28, dtype=torch.float64))
    assert torch.isfinite(matrices).all()
    torch.testing.assert_close(matrices[0], torch.eye(28, dtype=torch.float64))


def test_negative_sigma_is_rejected() -> None:
    with pytest.raises(ValueError, match="sigma"):
        blur_matrices([-0.5], 28)


@pytest.mark.parametrize(("n_sigmas", "n_images"), [(1, 1), (1, 7), (8, 128), (11, 93), (51, 20)])
def test_equals_one_product_per_sigma_and_image_bitwise(n_sigmas: int, n_images: int) -> None:
    generator = torch.Generator().manual_seed(n_sigmas * 1000 + n_images)
    images = torch.randint(0, 256, (n_images, 28, 28), generator=generator).float().div_(255)
    matrices = blur_matrices(np.linspace(0, 5, n_sigmas), 28)
    simple = torch.stack([torch.stack([r @ image @ r.T for image in images]) for r in matrices])
    assert torch.equal(blur(images, matrices), simple)
