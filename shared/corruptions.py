"""MedMNIST-C's corruptions of chest X-rays: reproducible shifted copies of a labelled image set.

    shifted = CorruptedImages(holdout, "gaussian_noise", severity=3, seed=0)   # a LabelledImages, as the hold-out
    image = corrupt(np.asarray(pil_image), "jpeg_compression", 5, rng)      # one uint8 H x W image

MedMNIST-C (Di Salvo, Doerrich and Ledig 2024, arXiv 2406.17536; the `medmnistc` package, Apache-2.0) defines, per
MedMNIST dataset, the acquisition and processing corruptions a real image may suffer and five graded severities of
each. These are its PneumoniaMNIST corruptions with its severity parameters, applied as it applies them: to the
stored 8-bit grayscale image, at its resolution, before any resizing or normalization. They are implemented here with
PIL, NumPy and torchvision because the package itself pins scikit-image and medmnist to older releases than the
project's lock and imports ImageMagick (Wand) for blurs that PneumoniaMNIST does not use; tests/test_corruptions.py
checks each against MedMNIST-C's definition, restated with the calls it makes.

Every corrupted image is drawn from its own random stream (seed, corruption, severity, index), so the same seed gives
the same shifted set on every machine and in every order. Labels and patients are those of the source set: a shifted
set is scored, never trained on.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageEnhance

from shared.datasets.base import LabelledImages

SEVERITIES = (1, 2, 3, 4, 5)


def _as_unit(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float64) / 255.0


def _to_uint8(unit: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> uint8 as MedMNIST-C converts (clipped, then truncated, not rounded)."""
    return (np.clip(unit, 0.0, 1.0) * 255).astype(np.uint8)


def pixelate(image: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    """Down- and up-sampled with box filters: fewer detector elements, or a low-resolution export."""
    pil = Image.fromarray(image)
    width, height = pil.size
    small = pil.resize((int(width * factor), int(height * factor)), Image.Resampling.BOX)
    return np.asarray(small.resize((width, height), Image.Resampling.BOX))


def jpeg_compression(image: np.ndarray, quality: float, rng: np.random.Generator) -> np.ndarray:
    """Lossy JPEG at this quality: a PACS export or a teleradiology link."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=int(quality))
    return np.asarray(Image.open(buffer).convert("L"))


def gaussian_noise(image: np.ndarray, scale: float, rng: np.random.Generator) -> np.ndarray:
    """Additive electronic noise of this standard deviation (in [0, 1] intensity)."""
    unit = _as_unit(image)
    return _to_uint8(unit + rng.normal(size=unit.shape, scale=scale))


def speckle_noise(image: np.ndarray, scale: float, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative noise: x + x * n, n ~ N(0, scale)."""
    unit = _as_unit(image)
    return _to_uint8(unit + unit * rng.normal(size=unit.shape, scale=scale))


def impulse_noise(image: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    """Salt-and-pepper: this fraction of the pixels set to black or white, half each (dead or hot detector
    elements); scikit-image's `random_noise(mode="s&p")` as MedMNIST-C calls it."""
    unit = _as_unit(image).copy()
    flipped = rng.random(unit.shape) < amount
    salt = rng.random(unit.shape) < 0.5
    unit[flipped & salt] = 1.0
    unit[flipped & ~salt] = 0.0
    return _to_uint8(unit)


def shot_noise(image: np.ndarray, photons: float, rng: np.random.Generator) -> np.ndarray:
    """Poisson (quantum) noise of a low-dose exposure: this many photons at full intensity."""
    return _to_uint8(rng.poisson(_as_unit(image) * photons) / photons)


def gaussian_blur(image: np.ndarray, kernel: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian blur with this (odd) kernel size and torchvision's default sigma for it: focal spot, motion."""
    tensor = torch.from_numpy(np.array(image))[None]  # a writable copy
    return TF.gaussian_blur(tensor, kernel_size=int(kernel)).numpy()[0]


def brightness(image: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    """PIL's brightness enhancement by this factor: over- or under-exposure."""
    return np.asarray(ImageEnhance.Brightness(Image.fromarray(image)).enhance(factor))


def contrast(image: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    """PIL's contrast enhancement by this factor (towards or away from the mean grey): windowing, kVp."""
    return np.asarray(ImageEnhance.Contrast(Image.fromarray(image)).enhance(factor))


def gamma_correction(image: np.ndarray, gamma: float, rng: np.random.Generator) -> np.ndarray:
    """torchvision's gamma adjustment (gain 1): a different detector response or display curve."""
    tensor = torch.from_numpy(np.array(image))[None]  # a writable copy
    return TF.adjust_gamma(tensor, gamma, gain=1).numpy()[0]


@dataclass(frozen=True)
class Corruption:
    """One MedMNIST-C corruption: its function and the parameter of each severity 1..5."""

    name: str
    family: str  # MedMNIST-C's grouping: digital, noise, blur, color (intensity)
    apply: Callable[[np.ndarray, float, np.random.Generator], np.ndarray]
    severity_params: tuple[float, ...]

    def __call__(self, image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
        if severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {severity}")
        return self.apply(image, self.severity_params[severity - 1], rng)


# MedMNIST-C's registry for 'pneumoniamnist' (medmnistc/corruptions/registry.py), in its order and with its values.
CORRUPTIONS: dict[str, Corruption] = {
    c.name: c
    for c in (
        Corruption("pixelate", "digital", pixelate, (0.8, 0.7, 0.6, 0.5, 0.40)),
        Corruption("jpeg_compression", "digital", jpeg_compression, (50, 30, 15, 10, 7)),
        Corruption("gaussian_noise", "noise", gaussian_noise, (0.04, 0.05, 0.06, 0.07, 0.08)),
        Corruption("speckle_noise", "noise", speckle_noise, (0.05, 0.07, 0.10, 0.15, 0.20)),
        Corruption("impulse_noise", "noise", impulse_noise, (0.005, 0.01, 0.013, 0.017, 0.02)),
        Corruption("shot_noise", "noise", shot_noise, (300, 200, 150, 100, 80)),
        Corruption("gaussian_blur", "blur", gaussian_blur, (3, 5, 7, 9, 11)),
        Corruption("brightness_up", "color", brightness, (1.1, 1.2, 1.3, 1.4, 1.5)),
        Corruption("brightness_down", "color", brightness, (0.9, 0.8, 0.7, 0.6, 0.5)),
        Corruption("contrast_up", "color", contrast, (1.1, 1.2, 1.3, 1.4, 1.6)),
        Corruption("contrast_down", "color", contrast, (0.9, 0.8, 0.7, 0.6, 0.4)),
        Corruption("gamma_corr_up", "color", gamma_correction, (1.1, 1.2, 1.3, 1.4, 1.6)),
        Corruption("gamma_corr_down", "color", gamma_correction, (0.9, 0.8, 0.7, 0.6, 0.4)),
    )
}


def corrupt(image: np.ndarray, name: str, severity: int, rng: np.random.Generator) -> np.ndarray:
    """`image` (uint8, H x W) with corruption `name` at `severity` (1 mildest .. 5 strongest)."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}")
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 2:
        raise ValueError(f"a corruption takes a uint8 H x W image, got {image.dtype} {image.shape}")
    return CORRUPTIONS[name](image, severity, rng)


def image_rng(seed: int, name: str, severity: int, index: int) -> np.random.Generator:
    """The random stream of one corrupted image: the same for the same (seed, corruption, severity, index)."""
    return np.random.default_rng([seed, zlib.crc32(name.encode()), severity, index])


class CorruptedImages(LabelledImages):
    """A labelled set seen through one corruption at one severity: same labels and patients, images corrupted as
    they are loaded (deterministically, see `image_rng`)."""

    def __init__(
        self,
        source: LabelledImages,
        name: str,
        severity: int,
        seed: int = 0,
        indices: Sequence[int] | np.ndarray | None = None,
    ):
        if name not in CORRUPTIONS:
            raise ValueError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}")
        if severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {severity}")
        super().__init__(source.patient_ids, source.labels)
        self.source, self.name, self.severity, self.seed = source, name, severity, seed
        # the index of each entry in the first source, so that a subset keeps each image's own random stream
        self.indices = np.arange(len(source)) if indices is None else np.asarray(indices, dtype=np.int64)

    def load(self, index: int) -> Image.Image:
        image = np.asarray(self.source.load(index).convert("L"))
        rng = image_rng(self.seed, self.name, self.severity, int(self.indices[index]))
        return Image.fromarray(corrupt(image, self.name, self.severity, rng), mode="L")

    def subset(self, indices: Sequence[int] | np.ndarray) -> CorruptedImages:
        idx = np.asarray(indices, dtype=np.int64)
        return CorruptedImages(self.source.subset(idx), self.name, self.severity, self.seed, self.indices[idx])


def shift_name(corruption: str, severity: int) -> str:
    """'<corruption>@<severity>': how a shifted set is named in results and reports."""
    return f"{corruption}@{severity}"


def shift_names(corruptions: Sequence[str], severities: Sequence[int]) -> list[str]:
    """shift_name of each pair."""
    return [shift_name(name, severity) for name in corruptions for severity in severities]
