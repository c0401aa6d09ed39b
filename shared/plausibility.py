"""The input plausibility gate: is this image a chest radiograph this model can judge? Checked before diagnosing.

A served classifier answers for anything that decodes; a photo, a screenshot or a blank frame would get a confident
"pneumonia" or "normal". The gate refuses such inputs with a reason code instead. Its bounds are fitted on the
model's own training data and stored with the model (the config's "plausibility" entry):

    reason               refused when                                                 bound comes from
    too_small            the smaller side is under half the training images' smallest  training images' sizes
    aspect_ratio         width / height outside the training range, widened x1.35      training images' sizes
    not_grayscale        colour: mean largest channel difference above 8 (of 255)      fixed (radiographs are grey)
    constant             pixel standard deviation under max(2, 1/4 of the training    training images' pixels
                         images' smallest)
    out_of_distribution  the image's penultimate-layer features lie farther from the   training features, threshold
                         training features than the validation images do: RMS z-score  from validation features
                         above 1.25 x the 99th percentile of the validation images'

Truncated or undecodable input is refused earlier, by the decoder. The feature check needs the model itself; the
other checks only the image.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from shared.datasets.base import LabelledImages
from shared.errors import PneumoniaError
from shared.models.classifier import penultimate_features

ASPECT_TOLERANCE = 1.35
MAX_COLOR_DEVIATION = 8.0
MIN_STD_FLOOR = 2.0
OOD_QUANTILE, OOD_MARGIN = 0.99, 1.25
MAX_FIT_IMAGES = 1000
STD_EPSILON = 1e-6
GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})
REASONS = ("too_small", "aspect_ratio", "not_grayscale", "constant", "out_of_distribution")


class ImplausibleImageError(PneumoniaError):
    """The input is not a chest radiograph this model can judge; `reason` is one of REASONS."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class PlausibilityGate:
    """Fitted bounds (see the module docstring); JSON-able through to_dict / from_dict."""

    min_side: int
    min_aspect: float
    max_aspect: float
    min_std: float
    feature_mean: list[float]
    feature_std: list[float]
    max_feature_distance: float
    fitted_on: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PlausibilityGate:
        return cls(**data)


def color_deviation(img: Image.Image) -> float:
    """Mean over pixels of the largest difference between two colour channels (0 for a grey image), 0..255."""
    if img.mode in GRAY_MODES:
        return 0.0
    rgb = np.asarray(img.convert("RGB"), dtype=np.int16)
    return float((rgb.max(axis=2) - rgb.min(axis=2)).mean())


def pixel_std(img: Image.Image) -> float:
    """Standard deviation of the grey pixel values, 0..255."""
    return float(np.asarray(img.convert("L"), dtype=np.float64).std())


def check_image(img: Image.Image, gate: PlausibilityGate) -> None:
    """The model-free checks on the decoded image (in its original mode); ImplausibleImageError on failure."""
    width, height = img.size
    if min(width, height) < gate.min_side:
        raise ImplausibleImageError(
            "too_small", f"image is {width} x {height} px; this model needs at least {gate.min_side} px per side"
        )
    aspect = width / height
    if not gate.min_aspect <= aspect <= gate.max_aspect:
        raise ImplausibleImageError(
            "aspect_ratio",
            f"aspect ratio {aspect:.2f} (width / height) is outside {gate.min_aspect:.2f}-{gate.max_aspect:.2f}, "
            "the range of chest radiographs this model was trained on",
        )
    deviation = color_deviation(img)
    if deviation > MAX_COLOR_DEVIATION:
        raise ImplausibleImageError(
            "not_grayscale",
            f"image is in colour (mean channel difference {deviation:.1f} of 255); radiographs are grey",
        )
    std = pixel_std(img)
    if std < gate.min_std:
        raise ImplausibleImageError(
            "constant", f"image is (nearly) constant: pixel standard deviation {std:.2f} < {gate.min_std:.2f}"
        )


def feature_distance(features: np.ndarray, gate: PlausibilityGate) -> np.ndarray:
    """RMS z-score of each feature vector (N x D) against the training features' per-dimension mean and std."""
    mean, std = np.asarray(gate.feature_mean), np.asarray(gate.feature_std)
    return np.sqrt((((np.asarray(features, dtype=np.float64) - mean) / std) ** 2).mean(axis=1))


def check_features(features: np.ndarray, gate: PlausibilityGate) -> None:
    """Refuse when any row's feature distance exceeds the gate's threshold (ImplausibleImageError)."""
    distances = feature_distance(features, gate)
    worst = float(distances.max())
    if worst > gate.max_feature_distance:
        raise ImplausibleImageError(
            "out_of_distribution",
            f"image is unlike this model's training radiographs (feature distance {worst:.2f} > "
            f"{gate.max_feature_distance:.2f})",
        )


def _features_of(
    model: nn.Module, images: LabelledImages, transform: Any, device: torch.device, batch_size: int = 64
) -> np.ndarray:
    out = []
    model.eval()
    with torch.no_grad():
        for first in range(0, len(images), batch_size):
            batch = torch.stack([transform(images.load(i)) for i in range(first, min(first + batch_size, len(images)))])
            out.append(penultimate_features(model, batch.to(device))[1].cpu().numpy())
    return np.concatenate(out).astype(np.float64)


def _sample(images: LabelledImages, limit: int, seed: int) -> LabelledImages:
    if len(images) <= limit:
        return images
    return images.subset(np.sort(np.random.default_rng(seed).choice(len(images), size=limit, replace=False)))


def fit_gate(
    model: nn.Module,
    transform: Any,
    train: LabelledImages,
    val: LabelledImages,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> PlausibilityGate:
    """Fit the bounds on (a seeded sample of up to 1000 of) the real training images; the feature threshold on the
    validation images, which the feature statistics have not seen."""
    device = torch.device(device)
    train, val = _sample(train, MAX_FIT_IMAGES, seed), _sample(val, MAX_FIT_IMAGES, seed)
    sizes, stds = [], []
    for i in range(len(train)):
        img = train.load(i)
        sizes.append(img.size)
        stds.append(pixel_std(img))
    aspects = [w / h for w, h in sizes]
    train_features = _features_of(model, train, transform, device)
    mean, std = train_features.mean(axis=0), train_features.std(axis=0) + STD_EPSILON
    partial = PlausibilityGate(
        min_side=max(1, min(min(s) for s in sizes) // 2),
        min_aspect=min(aspects) / ASPECT_TOLERANCE,
        max_aspect=max(aspects) * ASPECT_TOLERANCE,
        min_std=max(MIN_STD_FLOOR, min(stds) / 4),
        feature_mean=mean.tolist(),
        feature_std=std.tolist(),
        max_feature_distance=float("inf"),
        fitted_on=len(train),
    )
    val_distances = feature_distance(_features_of(model, val, transform, device), partial)
    threshold = float(np.quantile(val_distances, OOD_QUANTILE)) * OOD_MARGIN
    return PlausibilityGate(**{**partial.to_dict(), "max_feature_distance": threshold})
