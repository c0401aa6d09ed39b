"""How good and how private the synthetic images are: SSIM, Fréchet distances and a memorization check.

SSIM follows skimage.metrics.structural_similarity with its defaults (7 x 7 uniform window, sample covariance,
K1 = 0.01, K2 = 0.03, mean over the window positions that fit inside the image), computed for whole sets at once
in torch: the tests check it against skimage.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import linalg
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from shared.datasets.base import LabelledImages
from shared.models.classifier import penultimate_features

SSIM_WINDOW = 7
SSIM_K1, SSIM_K2 = 0.01, 0.03
# torch-fidelity's Inception-v3 weights (the TF FID network); used only when already in the torch hub cache.
FID_WEIGHTS_NAME = "weights-inception-2015-12-05-6726825d.pth"


class ImageViews(Dataset):
    """Item i: (image i resized to `size` as uint8 H x W, the classifier's input tensor or an empty tensor)."""

    def __init__(
        self,
        images: LabelledImages,
        indices: Sequence[int],
        size: tuple[int, int],
        transform: Callable[[Image.Image], torch.Tensor] | None = None,
    ):
        self.images, self.indices, self.size, self.transform = images, list(indices), size, transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images.load(self.indices[i])
        pixels = torch.from_numpy(np.array(image.resize(self.size, Image.Resampling.BILINEAR), dtype=np.uint8))
        return pixels, self.transform(image) if self.transform is not None else torch.empty(0)


@torch.no_grad()
def describe(
    images: LabelledImages,
    indices: Sequence[int],
    size: tuple[int, int],
    model: nn.Module | None = None,
    transform: Callable[[Image.Image], torch.Tensor] | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    desc: str = "images",
) -> tuple[np.ndarray, np.ndarray | None]:
    """Decode each image once: (uint8 N x H x W pixels at `size` = (width, height), N x D penultimate features of
    `model` (in eval mode) on `transform`ed inputs, or None without a model)."""
    loader = DataLoader(ImageViews(images, indices, size, transform if model is not None else None), batch_size)
    pixels, features = [], []
    for batch_pixels, batch_inputs in tqdm(loader, desc=desc, leave=False):
        pixels.append(batch_pixels.numpy())
        if model is not None:  # batch x C x S x S -> batch x D
            features.append(penultimate_features(model, batch_inputs.to(device))[1].double().cpu().numpy())
    return np.concatenate(pixels), np.concatenate(features) if model is not None else None


def _box_mean(z: torch.Tensor) -> torch.Tensor:
    """Mean over every SSIM window that fits inside the images: B x H x W -> B x (H - 6) x (W - 6)."""
    rows = F.avg_pool1d(z.flatten(0, -3), SSIM_WINDOW, stride=1)  # along W
    both = F.avg_pool1d(rows.transpose(1, 2), SSIM_WINDOW, stride=1).transpose(1, 2)  # along H
    return both.reshape(*z.shape[:-2], *both.shape[-2:])


def _local_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Window means and variances (sample covariance normalisation) of ... x H x W images."""
    n = SSIM_WINDOW * SSIM_WINDOW
    mu = _box_mean(x)
    return mu, (_box_mean(x * x) - mu * mu) * n / (n - 1)


@torch.no_grad()
def ssim_matrix(
    a: np.ndarray,
    b: np.ndarray,
    device: torch.device | str = "cpu",
    block: int = 4,
    chunk: int = 256,
    desc: str = "SSIM",
) -> np.ndarray:
    """SSIM of every image of `a` with every image of `b` (uint8 N x H x W and M x H x W, data range 255): N x M.

    Works on `block` images of `a` against `chunk` images of `b` at a time, which bounds memory for any N and M.
    """
    if a.ndim != 3 or b.ndim != 3 or a.shape[1:] != b.shape[1:]:
        raise ValueError(f"SSIM needs two stacks of equal-size images, got {a.shape} and {b.shape}")
    if min(a.shape[1:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW} x {SSIM_WINDOW} px, got {a.shape[1:]}")
    c1, c2 = SSIM_K1**2, SSIM_K2**2  # for data range 1: pixels are scaled to [0, 1]
    n = SSIM_WINDOW * SSIM_WINDOW
    out = np.empty((len(a), len(b)))
    x_all = torch.from_numpy(a).to(device).float() / 255
    mu_x_all, var_x_all = _local_stats(x_all)  # N x H' x W'
    for lo in tqdm(range(0, len(b), chunk), desc=desc, leave=False):
        y = torch.from_numpy(b[lo : lo + chunk]).to(device).float()[None] / 255  # 1 x chunk x H x W
        mu_y, var_y = _local_stats(y)
        for i in range(0, len(a), block):
            x, mu_x, var_x = (t[i : i + block, None] for t in (x_all, mu_x_all, var_x_all))  # block x 1 x ...
            cov = (_box_mean(x * y) - mu_x * mu_y) * n / (n - 1)  # block x chunk x H' x W'
            ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
            out[i : i + block, lo : lo + y.shape[1]] = ssim_map.mean(dim=(2, 3)).double().cpu().numpy()
    return out


def summary_stats(values: np.ndarray) -> dict[str, float]:
    values = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "median": float(np.median(values)),
        "min": float(values.min()),
        "max": float(values.max()),
    }


def off_diagonal(square: np.ndarray) -> np.ndarray:
    """Each row of a square matrix without its diagonal entry: N x (N - 1)."""
    n = len(square)
    return square[~np.eye(n, dtype=bool)].reshape(n, n - 1)


def ssim_distribution(synthetic: np.ndarray, real: np.ndarray, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Each synthetic image's mean SSIM against the real images, and each real image's mean SSIM against the other
    real images (the reference: how alike two real X-rays are)."""
    if len(real) < 2:
        raise ValueError("the SSIM reference needs at least 2 real images")
    synthetic_vs_real = ssim_matrix(synthetic, real, device, desc="SSIM synthetic vs real").mean(axis=1)
    real_vs_real = off_diagonal(ssim_matrix(real, real, device, desc="SSIM real vs real")).mean(axis=1)
    return {
        "n_real": len(real),
        "n_synthetic": len(synthetic),
        "image_size": list(real.shape[1:]),
        "synthetic_vs_real": summary_stats(synthetic_vs_real),
        "real_vs_real": summary_stats(real_vs_real),
        "synthetic_vs_real_values": synthetic_vs_real.tolist(),
        "real_vs_real_values": real_vs_real.tolist(),
    }


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N x D, M x D):
    |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"Fréchet distance needs two N x D feature sets with N >= 2, got {a.shape} and {b.shape}")
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    with warnings.catch_warnings():  # fewer images than features make the product singular; handled below
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(cov_a @ cov_b)
        if not np.isfinite(covmean).all():  # regularise as pytorch-fid does
            offset = np.eye(len(cov_a)) * 1e-6
            covmean = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    distance = np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean.real)
    return float(max(distance, 0.0))


def floor_set_size(n_real: int, n_synthetic: int) -> int:
    """Images per set for a distance beside its real-vs-real floor: two disjoint real halves and the synthetic set."""
    return min(n_real // 2, n_synthetic)


def frechet_with_floor(real: np.ndarray, synthetic: np.ndarray) -> dict[str, Any]:
    """Fréchet distance real vs synthetic beside real vs real, on sets of one size n (floor_set_size): two disjoint
    halves of the real features (A, B) and n synthetic ones (S); returns FD(A, S), FD(A, B) and their ratio."""
    n = floor_set_size(len(real), len(synthetic))
    if n < 2:
        raise ValueError(f"need at least 4 real and 2 synthetic images, got {len(real)} and {len(synthetic)}")
    half_a, half_b = real[:n], real[n : 2 * n]
    real_vs_synthetic = frechet_distance(half_a, synthetic[:n])
    real_vs_real = frechet_distance(half_a, half_b)
    return {
        "n_per_set": n,
        "feature_dim": int(real.shape[1]),
        "real_vs_synthetic": real_vs_synthetic,
        "real_vs_real": real_vs_real,
        "ratio": real_vs_synthetic / real_vs_real if real_vs_real > 0 else None,
    }


def inception_weights() -> tuple[Path | None, str]:
    """(path of torch-fidelity's cached Inception weights, '') or (None, why Inception FID cannot run)."""
    if importlib.util.find_spec("torch_fidelity") is None:
        return None, "torch-fidelity is not installed"
    path = Path(torch.hub.get_dir()) / "checkpoints" / FID_WEIGHTS_NAME
    if not path.is_file():
        return None, f"torch-fidelity's Inception weights are not in the torch hub cache ({path}); not downloaded"
    return path, ""


@torch.no_grad()
def inception_features(pixels: np.ndarray, weights: Path, device: torch.device, batch_size: int = 64) -> np.ndarray:
    """torch-fidelity's 2048-d Inception-v3 pool features of uint8 N x H x W grayscale images (as RGB)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    extractor = FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(weights)
    ).to(device)
    features = []
    for start in tqdm(range(0, len(pixels), batch_size), desc="Inception features", leave=False):
        batch = torch.from_numpy(pixels[start : start + batch_size])[:, None].expand(-1, 3, -1, -1)  # B x 3 x H x W
        (out,) = extractor(batch.contiguous().to(device))
        features.append(out.double().cpu().numpy())
    return np.concatenate(features)


def nearest_neighbours(
    query: np.ndarray, reference: np.ndarray, exclude: np.ndarray | None = None, chunk: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """For each query feature vector, (index of the nearest reference vector, Euclidean distance); `exclude[i]`,
    when given, is a reference index that query i may not match (itself)."""
    ref = torch.from_numpy(reference)
    index, distance = np.empty(len(query), dtype=np.int64), np.empty(len(query))
    for lo in range(0, len(query), chunk):
        d = torch.cdist(torch.from_numpy(query[lo : lo + chunk]), ref)  # chunk x M
        if exclude is not None:
            d[torch.arange(len(d)), torch.from_numpy(exclude[lo : lo + chunk])] = float("inf")
        best = d.min(dim=1)
        index[lo : lo + len(d)], distance[lo : lo + len(d)] = best.indices.numpy(), best.values.numpy()
    return index, distance


def memorization_check(
    synthetic: np.ndarray,
    real: np.ndarray,
    threshold: float,
    synthetic_features: np.ndarray | None = None,
    real_features: np.ndarray | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Each synthetic image's nearest real image by pixel SSIM (and by feature distance when features are given);
    synthetic images with SSIM >= `threshold` to some real image are flagged as near-copies.

    The yardstick is how close distinct real images come: as many real images as there are synthetic ones (at most
    all) are searched against the other real images the same way.
    Returns n_synthetic, n_real, threshold, nearest_real (index per synthetic image), nearest_ssim_values,
    nearest_ssim and real_nearest_ssim (summaries), n_flagged, flagged_indices (most similar first) and
    feature_distance (None without features): nearest_real, synthetic_median, synthetic_min, real_median and
    same_nearest_as_ssim (the share of synthetic images whose nearest real image is the same by both measures).
    """
    if len(real) < 2:
        raise ValueError("the memorization check needs at least 2 real images")
    similarity = ssim_matrix(synthetic, real, device, desc="memorization SSIM")  # N_synth x N_real
    nearest = similarity.argmax(axis=1)
    nearest_ssim = similarity[np.arange(len(synthetic)), nearest]
    n_queries = min(len(synthetic), len(real))
    real_similarity = ssim_matrix(real[:n_queries], real, device, desc="real-vs-real SSIM")
    real_similarity[np.arange(n_queries), np.arange(n_queries)] = -np.inf  # not itself
    flagged = np.flatnonzero(nearest_ssim >= threshold)
    result: dict[str, Any] = {
        "n_synthetic": len(synthetic),
        "n_real": len(real),
        "threshold": threshold,
        "nearest_real": nearest.tolist(),
        "nearest_ssim_values": nearest_ssim.tolist(),
        "nearest_ssim": summary_stats(nearest_ssim),
        "real_nearest_ssim": summary_stats(real_similarity.max(axis=1)),
        "n_flagged": int(len(flagged)),
        "flagged_indices": flagged[np.argsort(-nearest_ssim[flagged], kind="stable")].tolist(),
        "feature_distance": None,
    }
    if synthetic_features is not None and real_features is not None:
        feature_nearest, synthetic_distance = nearest_neighbours(synthetic_features, real_features)
        _, real_distance = nearest_neighbours(real_features[:n_queries], real_features, exclude=np.arange(n_queries))
        result["feature_distance"] = {
            "nearest_real": feature_nearest.tolist(),
            "synthetic_median": float(np.median(synthetic_distance)),
            "synthetic_min": float(synthetic_distance.min()),
            "real_median": float(np.median(real_distance)),
            "same_nearest_as_ssim": float(np.mean(feature_nearest == nearest)),
        }
    return result
