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
    out_of_distribution  (a) its layout is unlike the training radiographs': the         training images, threshold
                         probabilistic-PCA Mahalanobis score of the 16 x 16, per-image    from validation images
                         standardized pixels; or (b) its penultimate-layer features lie
                         outside the training features: the same score in feature space;
                         each refused above 1.25 x the 99.5th percentile of the
                         validation images' scores

The out-of-distribution scores are probabilistic PCA (Tipping & Bishop 1999): the training vectors' mean, their top
principal directions with their variances, and one residual variance for the rest; a vector's score is its squared
Mahalanobis distance under that Gaussian divided by the dimension, about 1 for a typical training vector. The pixel
score sees layout (a photo, a texture, an inverted image), the feature score what the network makes of the image
(noise, gradients, patterns); together they refuse what either alone lets through.

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
OOD_QUANTILE, OOD_MARGIN = 0.995, 1.25
MAX_FIT_IMAGES = 1000
LAYOUT_SIDE = 16  # pixel layout compared at 16 x 16
LAYOUT_COMPONENTS, FEATURE_COMPONENTS = 16, 32
VARIANCE_FLOOR = 1e-6
GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})
REASONS = ("too_small", "aspect_ratio", "not_grayscale", "constant", "out_of_distribution")


class ImplausibleImageError(PneumoniaError):
    """The input is not a chest radiograph this model can judge; `reason` is one of REASONS."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class PpcaScore:
    """A probabilistic-PCA Gaussian of D-dimensional vectors; `score` is the squared Mahalanobis distance / D."""

    mean: list[float]
    components: list[list[float]]  # k x D, orthonormal rows
    variances: list[float]  # k
    residual_variance: float

    @classmethod
    def fit(cls, vectors: np.ndarray, components: int) -> PpcaScore:
        """Fit on N x D vectors (k = min(components, N - 1, D - 1) principal directions)."""
        x = np.asarray(vectors, dtype=np.float64)
        if len(x) < 3:
            raise ValueError(f"need at least 3 vectors to fit the plausibility gate, got {len(x)}")
        mean = x.mean(axis=0)
        _, singular, vt = np.linalg.svd(x - mean, full_matrices=False)
        eigen = singular**2 / (len(x) - 1)
        k = min(components, len(x) - 1, x.shape[1] - 1)
        rest = eigen[k:]
        residual = float(rest.mean()) if rest.size and rest.mean() > 0 else VARIANCE_FLOOR
        return cls(
            mean.tolist(),
            vt[:k].tolist(),
            np.maximum(eigen[:k], VARIANCE_FLOOR).tolist(),
            max(residual, VARIANCE_FLOOR),
        )

    def score(self, vectors: np.ndarray) -> np.ndarray:
        """N x D -> N scores (about 1 for typical training vectors)."""
        centred = np.asarray(vectors, dtype=np.float64) - np.asarray(self.mean)
        basis = np.asarray(self.components)
        projected = centred @ basis.T  # N x k
        residual = centred - projected @ basis
        inside = (projected**2 / np.asarray(self.variances)).sum(axis=1)
        return (inside + (residual**2).sum(axis=1) / self.residual_variance) / centred.shape[1]


@dataclass(frozen=True)
class PlausibilityGate:
    """Fitted bounds (see the module docstring); JSON-able through to_dict / from_dict."""

    min_side: int
    min_aspect: float
    max_aspect: float
    min_std: float
    layout: PpcaScore
    max_layout_score: float
    features: PpcaScore
    max_feature_score: float
    fitted_on: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PlausibilityGate:
        return cls(**{**data, "layout": PpcaScore(**data["layout"]), "features": PpcaScore(**data["features"])})


def layout_vector(img: Image.Image) -> np.ndarray:
    """The image's grey layout: 16 x 16 area-averaged pixels, standardized (zero mean, unit variance) -> 256."""
    small = np.asarray(img.convert("L").resize((LAYOUT_SIDE, LAYOUT_SIDE), Image.Resampling.BOX), dtype=np.float64)
    return ((small - small.mean()) / (small.std() + 1.0)).ravel()  # +1 (of 255): a flat image stays near 0


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
    layout = float(gate.layout.score(layout_vector(img)[None])[0])
    if layout > gate.max_layout_score:
        raise ImplausibleImageError(
            "out_of_distribution",
            f"image layout is unlike this model's training radiographs (pixel score {layout:.2f} > "
            f"{gate.max_layout_score:.2f})",
        )


def check_features(features: np.ndarray, gate: PlausibilityGate) -> None:
    """Refuse when any row of penultimate features (N x D) scores above the gate's threshold."""
    worst = float(gate.features.score(features).max())
    if worst > gate.max_feature_score:
        raise ImplausibleImageError(
            "out_of_distribution",
            f"image is unlike this model's training radiographs to the network (feature score {worst:.2f} > "
            f"{gate.max_feature_score:.2f})",
        )


def verdict(img: Image.Image, model: nn.Module, transform: Any, gate: PlausibilityGate) -> str:
    """'accepted' or the refusal's reason code for one decoded image, with the served handler's checks (the image
    checks, then the feature distance of `model` in eval mode on `transform`ed input)."""
    try:
        check_image(img, gate)
        with torch.no_grad():
            _, features = penultimate_features(model, transform(img.convert("L"))[None])
        check_features(features.cpu().numpy(), gate)
    except ImplausibleImageError as exc:
        return exc.reason
    return "accepted"


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
    """Fit the bounds and both score models on (a seeded sample of up to 1000 of) the real training images; the two
    score thresholds on the validation images, which the score models have not seen."""
    device = torch.device(device)
    train, val = _sample(train, MAX_FIT_IMAGES, seed), _sample(val, MAX_FIT_IMAGES, seed)
    train_images = [train.load(i) for i in range(len(train))]
    val_images = [val.load(i) for i in range(len(val))]
    sizes = [img.size for img in train_images]
    aspects = [w / h for w, h in sizes]
    layout = PpcaScore.fit(np.stack([layout_vector(img) for img in train_images]), LAYOUT_COMPONENTS)
    features = PpcaScore.fit(_features_of(model, train, transform, device), FEATURE_COMPONENTS)
    val_layout = layout.score(np.stack([layout_vector(img) for img in val_images]))
    val_features = features.score(_features_of(model, val, transform, device))
    return PlausibilityGate(
        min_side=max(1, min(min(s) for s in sizes) // 2),
        min_aspect=min(aspects) / ASPECT_TOLERANCE,
        max_aspect=max(aspects) * ASPECT_TOLERANCE,
        min_std=max(MIN_STD_FLOOR, min(pixel_std(img) for img in train_images) / 4),
        layout=layout,
        max_layout_score=float(np.quantile(val_layout, OOD_QUANTILE)) * OOD_MARGIN,
        features=features,
        max_feature_score=float(np.quantile(val_features, OOD_QUANTILE)) * OOD_MARGIN,
        fitted_on=len(train),
    )
