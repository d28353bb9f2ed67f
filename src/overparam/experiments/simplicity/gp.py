"""The Gaussian-process approximation of the prior, where sampling runs out (Mingard et al.; Valle-Perez et
al.'s nn-pacbayes): the network's output on the cube is taken as the infinitely wide network's Gaussian
process (the NNGP kernel of a ReLU network with the same weight and bias variances), and the probability of
a sign pattern, P(f) = P(z_x > 0 exactly where f(x) = 1), is approximated by expectation propagation (EP)
with the step likelihood (probit with no noise). P(f | S) = P(f) / P(f restricted to S).

EP's site updates and log marginal likelihood follow Rasmussen and Williams (Algorithms 3.5 and 3.6, GPML's
infEP), with the sites updated in parallel (damped); it runs on many sign patterns at once."""

import math

import numpy as np
import torch
from scipy.special import log_ndtr

from overparam.experiments.simplicity.network import Architecture

CPU = torch.device("cpu")


def nngp_kernel(points: np.ndarray, architecture: Architecture) -> np.ndarray:
    """The output covariance [P, P] float64 of the infinitely wide ReLU network on points [P, n_bits]:
    K <- sigma_b^2 + sigma_w^2 x.x'/n, then per hidden layer the arc-cosine recursion
    K <- sigma_b^2 + sigma_w^2 / (2 pi) sqrt(K_xx K_x'x') (sin t + (pi - t) cos t),
    with cos t = K_xx' / sqrt(K_xx K_x'x')."""
    points = np.asarray(points, dtype=np.float64)
    w, b = architecture.sigma_w**2, architecture.sigma_b**2
    kernel = b + w * points @ points.T / points.shape[1]
    for _ in architecture.hidden:
        scale = np.sqrt(np.outer(np.diag(kernel), np.diag(kernel)))
        angle = np.arccos(np.clip(kernel / scale, -1.0, 1.0))
        kernel = b + w / (2 * math.pi) * scale * (np.sin(angle) + (math.pi - angle) * np.cos(angle))
    return kernel


def _ratio(z: np.ndarray) -> np.ndarray:
    """N(z) / Phi(z), stably."""
    return np.exp(-0.5 * z**2 - 0.5 * math.log(2 * math.pi) - log_ndtr(z))


def ep_log_probability(
    kernel: np.ndarray,
    signs: np.ndarray,
    *,
    sweeps: int = 60,
    damping: float = 0.5,
    tol: float = 1e-4,
    device: torch.device = CPU,
) -> np.ndarray:
    """log P(sign(z) = signs[f]) for z ~ N(0, kernel), by EP, for every row of signs [F, P] (+1 / -1);
    returns [F] float64 (natural log). Parallel EP: every site is updated from the same posterior, damped,
    and the posterior recomputed from a Cholesky factor, until the sites move by less than `tol` (sequential
    EP has the same fixed points; this one is a few batched factorisations a sweep, run on `device`)."""
    signs = np.asarray(signs, dtype=np.float64)
    site_tau, site_nu = np.zeros(signs.shape), np.zeros(signs.shape)
    sigma, mu, chol = _posterior(kernel, site_tau, site_nu, device)
    for _ in range(sweeps):
        cavity_tau, cavity_nu = _cavity(sigma, mu, site_tau, site_nu)
        mean, spread = cavity_nu / cavity_tau, np.sqrt(1 / cavity_tau)
        z = signs * mean / spread
        ratio = _ratio(z)
        tilted_mean = mean + signs * spread * ratio
        tilted_variance = np.maximum(spread**2 * (1 - ratio * (z + ratio)), 1e-12 * spread**2)
        new_tau = np.maximum(1 / tilted_variance - cavity_tau, 0.0)  # the step likelihood is log-concave
        new_nu = tilted_mean / tilted_variance - cavity_nu
        moved = max(np.abs(new_tau - site_tau).max(), np.abs(new_nu - site_nu).max())
        site_tau = (1 - damping) * site_tau + damping * new_tau
        site_nu = (1 - damping) * site_nu + damping * new_nu
        sigma, mu, chol = _posterior(kernel, site_tau, site_nu, device)
        if moved < tol:
            break
    cavity_tau, cavity_nu = _cavity(sigma, mu, site_tau, site_nu)
    log_z = log_ndtr(signs * cavity_nu / np.sqrt(cavity_tau))
    negative = (
        np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(axis=1)
        - log_z.sum(axis=1)
        - 0.5 * (site_nu * (sigma @ site_nu[:, :, None])[:, :, 0]).sum(axis=1)
        - 0.5
        * (cavity_nu * ((site_tau / cavity_tau * cavity_nu - 2 * site_nu) / (site_tau + cavity_tau))).sum(1)
        + 0.5 * (site_nu**2 / (cavity_tau + site_tau)).sum(axis=1)
        - 0.5 * np.log1p(site_tau / cavity_tau).sum(axis=1)
    )
    return -negative


def _cavity(
    sigma: np.ndarray, mu: np.ndarray, site_tau: np.ndarray, site_nu: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Natural parameters (precision, precision times mean) [F, P] of each site's cavity distribution."""
    variance = np.diagonal(sigma, axis1=1, axis2=2)
    return 1 / variance - site_tau, mu / variance - site_nu


def _posterior(
    kernel: np.ndarray, site_tau: np.ndarray, site_nu: np.ndarray, device: torch.device
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sigma = K - V'V with V = L^-1 S^1/2 K and L L' = I + S^1/2 K S^1/2; mu = Sigma nu; and L [F, P, P].
    In PyTorch: NumPy's batched Cholesky factorisation is a hundred times slower."""
    root = torch.from_numpy(np.sqrt(site_tau)).to(device)
    matrix = torch.from_numpy(kernel).to(device)
    chol = torch.linalg.cholesky(
        torch.eye(len(kernel), dtype=torch.float64, device=device)
        + root[:, :, None] * matrix * root[:, None, :]
    )
    v = torch.linalg.solve_triangular(chol, root[:, :, None] * matrix, upper=False)
    sigma = matrix - v.mT @ v
    mu = (sigma @ torch.from_numpy(site_nu).to(device)[:, :, None])[:, :, 0]
    return sigma.cpu().numpy(), mu.cpu().numpy(), chol.cpu().numpy()


def log10_conditional(
    *,
    kernel: np.ndarray,
    bits: np.ndarray,
    train_index: np.ndarray,
    device: torch.device = CPU,
) -> np.ndarray:
    """log10 P_GP(f | S) for functions bits [F, P] (0/1 on every point of `kernel` [P, P]) that agree on the
    training points `train_index`: log P(f) - log P(f on S), both by EP."""
    signs = 2.0 * np.asarray(bits, dtype=np.float64) - 1
    whole = ep_log_probability(kernel, signs, device=device)
    on_train = ep_log_probability(
        kernel[np.ix_(train_index, train_index)], signs[:1, train_index], device=device
    )
    return (whole - on_train[0]) / math.log(10)
