"""Diversity of an image set: mean pairwise MS-SSIM (lower = more diverse), compared with real images.

MS-SSIM (Wang, Simoncelli & Bovik 2003) as implemented by pytorch-msssim: Gaussian window (sigma 1.5) applied
without padding, contrast-structure terms at every scale, luminance at the coarsest, 2x average pooling between
scales, exponents 0.0448, 0.2856, 0.3001, 0.2363, 0.1333. The standard 5 scales need images larger than 160 px
with the 11-pixel window; chest X-rays here are often 28-64 px, so `scales_for(side)` keeps the standard setting
where it fits and otherwise uses a 7-pixel window and as many scales as fit (the exponents of the finest scales,
renormalized to sum to 1). Values from different settings are not comparable, so real and synthetic images are
always compared at the same size with the same setting.

A set whose images all look alike (mode collapse) has a mean pairwise MS-SSIM well above that of real images
of the same class; `compare_diversity` flags it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
K1, K2, SIGMA = 0.01, 0.03, 1.5
STANDARD_WINDOW, SMALL_WINDOW = 11, 7
# Mode-collapse rule: synthetic mean pairwise MS-SSIM above real's by more than this margin and 3 standard errors.
COLLAPSE_MARGIN = 0.05


def scales_for(side: int) -> tuple[int, tuple[float, ...]]:
    """(window size, per-scale exponents) for square-ish images whose smaller side is `side` pixels."""
    if side > (STANDARD_WINDOW - 1) * 2 ** (len(MS_SSIM_WEIGHTS) - 1):
        return STANDARD_WINDOW, MS_SSIM_WEIGHTS
    if side < SMALL_WINDOW:
        raise ValueError(f"images of {side} px are too small for MS-SSIM (at least {SMALL_WINDOW} px)")
    levels = 1
    while levels < len(MS_SSIM_WEIGHTS) and side // 2**levels >= SMALL_WINDOW:
        levels += 1
    weights = np.array(MS_SSIM_WEIGHTS[:levels])
    return SMALL_WINDOW, tuple(float(w) for w in weights / weights.sum())


def _gaussian_window(size: int) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - size // 2
    window = torch.exp(-(coords**2) / (2 * SIGMA**2))
    return window / window.sum()


def _filter(x: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter without padding: N x C x H x W -> N x C x (H-w+1) x (W-w+1)."""
    channels = x.shape[1]
    x = F.conv2d(x, window.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(x, window.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def _ssim_and_cs(x: torch.Tensor, y: torch.Tensor, window: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean SSIM and mean contrast-structure term per image and channel (data range 1)."""
    c1, c2 = K1**2, K2**2
    mu_x, mu_y = _filter(x, window), _filter(y, window)
    sigma_x = _filter(x * x, window) - mu_x**2
    sigma_y = _filter(y * y, window) - mu_y**2
    sigma_xy = _filter(x * y, window) - mu_x * mu_y
    cs_map = (2 * sigma_xy + c2) / (sigma_x + sigma_y + c2)
    ssim_map = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1) * cs_map
    return ssim_map.flatten(2).mean(-1), cs_map.flatten(2).mean(-1)


def ms_ssim(
    x: torch.Tensor, y: torch.Tensor, window_size: int | None = None, weights: tuple[float, ...] | None = None
) -> torch.Tensor:
    """MS-SSIM of each pair (x[i], y[i]): N x C x H x W tensors with values in [0, 1] -> N values.

    Window and exponents default to `scales_for` the images' smaller side.
    """
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"expected two N x C x H x W tensors of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if window_size is None or weights is None:
        window_size, weights = scales_for(min(x.shape[-2:]))
    window = _gaussian_window(window_size)
    x, y = x.to(torch.float64), y.to(torch.float64)
    terms = []
    for level in range(len(weights)):
        ssim, cs = _ssim_and_cs(x, y, window)
        if level < len(weights) - 1:
            terms.append(torch.relu(cs))
            padding = [side % 2 for side in x.shape[2:]]
            x = F.avg_pool2d(x, kernel_size=2, padding=padding)
            y = F.avg_pool2d(y, kernel_size=2, padding=padding)
    terms.append(torch.relu(ssim))
    stacked = torch.stack(terms)  # levels x N x C
    exponents = torch.tensor(weights, dtype=torch.float64).view(-1, 1, 1)
    return torch.prod(stacked**exponents, dim=0).mean(dim=1)


def random_pairs(n: int, num_pairs: int, seed: int) -> np.ndarray:
    """Up to `num_pairs` distinct unordered index pairs (i < j) of n items, seeded; num_pairs x 2."""
    if n < 2:
        raise ValueError(f"need at least 2 images for pairwise MS-SSIM, got {n}")
    total = n * (n - 1) // 2
    rng = np.random.default_rng(seed)
    chosen = rng.choice(total, size=min(num_pairs, total), replace=False)
    # pair k in the row-major enumeration of the upper triangle
    i = (n - 2 - np.floor(np.sqrt(-8 * chosen + 4 * n * (n - 1) - 7) / 2 - 0.5)).astype(int)
    j = chosen + i + 1 - n * (n - 1) // 2 + (n - i) * ((n - i) - 1) // 2
    return np.stack([i, j], axis=1)


@dataclass(frozen=True)
class PairwiseMsSsim:
    """Mean pairwise MS-SSIM of one image set, with its standard error and the number of pairs."""

    mean: float
    std_error: float
    pairs: int


def mean_pairwise_ms_ssim(images: np.ndarray, num_pairs: int = 200, seed: int = 0) -> PairwiseMsSsim:
    """Images N x H x W (or N x C x H x W) in [0, 1] -> mean MS-SSIM over seeded random distinct pairs."""
    array = torch.as_tensor(np.asarray(images, dtype=np.float64))
    if array.dim() == 3:
        array = array[:, None]
    pairs = random_pairs(len(array), num_pairs, seed)
    values = ms_ssim(array[pairs[:, 0]], array[pairs[:, 1]]).numpy()
    std_error = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0
    return PairwiseMsSsim(float(values.mean()), std_error, len(values))


def collapse_suspected(real: PairwiseMsSsim, synthetic: PairwiseMsSsim) -> bool:
    """Synthetic images clearly more alike than real ones: the mean pairwise MS-SSIM exceeds real's by more than
    COLLAPSE_MARGIN and by more than three standard errors of the difference."""
    noise = 3 * float(np.hypot(real.std_error, synthetic.std_error))
    return bool(synthetic.mean - real.mean > max(COLLAPSE_MARGIN, noise))


@dataclass(frozen=True)
class DiversityComparison:
    """Synthetic vs real mean pairwise MS-SSIM, the difference, and whether it signals mode collapse."""

    real: PairwiseMsSsim
    synthetic: PairwiseMsSsim
    difference: float  # synthetic - real: > 0 means less diverse than real
    mode_collapse: bool
    window_size: int
    scales: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare_diversity(
    real: np.ndarray, synthetic: np.ndarray, num_pairs: int = 200, seed: int = 0
) -> DiversityComparison:
    """Compare diversity at one image size; flags mode collapse when synthetic images are clearly more alike
    (`collapse_suspected`)."""
    if np.shape(real)[-2:] != np.shape(synthetic)[-2:]:
        raise ValueError(f"real and synthetic images differ in size: {np.shape(real)} vs {np.shape(synthetic)}")
    window, weights = scales_for(min(np.shape(real)[-2:]))
    real_stats = mean_pairwise_ms_ssim(real, num_pairs, seed)
    synthetic_stats = mean_pairwise_ms_ssim(synthetic, num_pairs, seed)
    return DiversityComparison(
        real=real_stats,
        synthetic=synthetic_stats,
        difference=synthetic_stats.mean - real_stats.mean,
        mode_collapse=collapse_suspected(real_stats, synthetic_stats),
        window_size=window,
        scales=len(weights),
    )
