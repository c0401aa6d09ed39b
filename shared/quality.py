"""A cheap image-set similarity for tests and sanity checks: the Fréchet distance between pixel statistics.

Not FID: no Inception features, so it only sees coarse layout and brightness. It needs no download and
separates "looks like the data" from "noise" well enough to check that GAN training moves the right way.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg


def _downsampled_features(images: np.ndarray, size: int, name: str) -> np.ndarray:
    """N x H x W floats in [0, 1] -> N x (size*size), area-averaged."""
    if images.ndim != 3 or len(images) < 2:
        raise ValueError(f"{name} must be an array N x H x W with N >= 2, got shape {images.shape}")
    pooled = F.interpolate(torch.as_tensor(images, dtype=torch.float64)[:, None], size=(size, size), mode="area")
    return pooled.flatten(1).numpy()


def pixel_frechet_distance(real: np.ndarray, fake: np.ndarray, size: int = 8) -> float:
    """Fréchet distance between Gaussians fitted to the size x size downsampled pixels of two image sets."""
    x = _downsampled_features(real, size, "real")
    y = _downsampled_features(fake, size, "fake")
    mu_x, mu_y = x.mean(axis=0), y.mean(axis=0)
    cov_x, cov_y = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    # a small ridge keeps the product non-singular when there are fewer images than features
    ridge = np.eye(len(cov_x)) * 1e-6
    covmean = linalg.sqrtm((cov_x + ridge) @ (cov_y + ridge)).real
    distance = np.sum((mu_x - mu_y) ** 2) + np.trace(cov_x) + np.trace(cov_y) - 2 * np.trace(covmean)
    return float(max(distance, 0.0))
