"""MS-SSIM diversity: agrees with pytorch-msssim, orders similarity correctly, and detects a collapsed image set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_msssim import ms_ssim as reference_ms_ssim

from shared.datasets import load_dataset
from shared.diversity import (
    MS_SSIM_WEIGHTS,
    compare_diversity,
    mean_pairwise_ms_ssim,
    ms_ssim,
    random_pairs,
    scales_for,
)


def smooth_pair(side: int, mix: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two batches of smooth random images; y is x blended with independent noise by `mix`."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(3, 1, side, side, generator=g)
    y = x * (1 - mix) + mix * torch.rand(3, 1, side, side, generator=g)
    return F.avg_pool2d(x, 3, 1, 1), F.avg_pool2d(y, 3, 1, 1)


@pytest.mark.parametrize(("side", "window"), [(192, 11), (128, 7)])
def test_matches_pytorch_msssim(side: int, window: int) -> None:
    x, y = smooth_pair(side, 0.3)
    ours = ms_ssim(x, y, window_size=window, weights=MS_SSIM_WEIGHTS).numpy()
    theirs = reference_ms_ssim(x, y, data_range=1.0, size_average=False, win_size=window).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_identical_images_score_one_and_more_noise_scores_lower() -> None:
    x, _ = smooth_pair(32, 0.0)
    assert torch.allclose(ms_ssim(x, x), torch.ones(3, dtype=torch.float64))
    scores = [ms_ssim(*smooth_pair(32, mix)).mean().item() for mix in (0.1, 0.4, 0.8)]
    assert scores[0] > scores[1] > scores[2]


def test_small_images_use_a_small_window_and_fewer_scales() -> None:
    assert scales_for(224) == (11, MS_SSIM_WEIGHTS)
    window, weights = scales_for(28)
    assert window == 7 and len(weights) == 3 and sum(weights) == pytest.approx(1.0)
    assert len(scales_for(64)[1]) == 4
    with pytest.raises(ValueError, match="too small"):
        scales_for(6)


@pytest.mark.parametrize("n", [2, 3, 7, 40])
def test_random_pairs_enumerate_distinct_unordered_pairs(n: int) -> None:
    total = n * (n - 1) // 2
    pairs = random_pairs(n, total + 10, seed=1)  # asking for more than exist gives all of them once
    upper = np.triu_indices(n, 1)
    assert sorted(map(tuple, pairs.tolist())) == sorted(zip(upper[0].tolist(), upper[1].tolist(), strict=True))
    some = random_pairs(n, max(total // 2, 1), seed=2)
    assert len({tuple(p) for p in some.tolist()}) == len(some) and (some[:, 0] < some[:, 1]).all()


def phantom_pneumonia(phantom_dir: Path, count: int) -> np.ndarray:
    images = load_dataset("phantom", phantom_dir).labelled
    positives = [i for i, label in enumerate(images.labels) if label == 1][:count]
    return np.stack([np.asarray(images.load(i), dtype=np.float64) / 255.0 for i in positives])


def test_a_collapsed_set_is_flagged_and_a_real_one_is_not(phantom_dir: Path) -> None:
    real = phantom_pneumonia(phantom_dir, 80)
    fresh_real, other_real = real[:40], real[40:]
    healthy = compare_diversity(fresh_real, other_real, num_pairs=150)
    assert not healthy.mode_collapse and abs(healthy.difference) < 0.05
    rng = np.random.default_rng(0)
    collapsed = np.clip(real[:1] + rng.normal(0, 0.01, size=(40, *real.shape[1:])), 0, 1)  # one image, jittered
    result = compare_diversity(fresh_real, collapsed, num_pairs=150)
    assert result.mode_collapse and result.synthetic.mean > 0.9 > result.real.mean
    assert (result.window_size, result.scales) == (7, 3) and result.to_dict()["real"]["pairs"] == 150


def test_mean_pairwise_needs_two_images() -> None:
    with pytest.raises(ValueError, match="at least 2 images"):
        mean_pairwise_ms_ssim(np.zeros((1, 32, 32)))
