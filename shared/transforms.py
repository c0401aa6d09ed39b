"""Image preprocessing: the GANs' (PIL grayscale in, tensors in [-1, 1] out, and back to uint8 pixels) and the random
acquisition changes the classifier's strong augmentation draws (RandomGamma, GaussianNoise)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torchvision.transforms.functional as TF
from torchvision import transforms


def gan_transform(image_size: int, channels: int) -> transforms.Compose:
    """PIL 'L' image -> channels x image_size x image_size tensor in [-1, 1] (grayscale replicated for 3)."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    return transforms.Compose(
        [
            transforms.Resize(image_size),
            transforms.CenterCrop(image_size),
            transforms.Grayscale(num_output_channels=channels),
            transforms.ToTensor(),  # [0, 1]
            transforms.Normalize([0.5] * channels, [0.5] * channels),  # [-1, 1]
        ]
    )


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Generator output N x C x H x W in [-1, 1] -> uint8 N x H x W (C = 1) or N x H x W x 3 (C = 3)."""
    pixels = ((images.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    pixels = pixels.permute(0, 2, 3, 1).numpy()  # N x H x W x C
    return pixels[..., 0] if pixels.shape[-1] == 1 else pixels


class RandomGamma:
    """A PIL image or tensor through a gamma drawn log-uniformly in [low, high] (torch's RNG, so seeded runs repeat)."""

    def __init__(self, low: float, high: float) -> None:
        self.low, self.high = math.log(low), math.log(high)

    def __call__(self, image):  # noqa: ANN001, ANN204 (PIL image or tensor, as torchvision's transforms)
        return TF.adjust_gamma(image, math.exp(self.low + (self.high - self.low) * torch.rand(()).item()))


class GaussianNoise:
    """Additive noise of standard deviation U(0, max_sigma) on a tensor in [0, 1], clipped to [0, 1]."""

    def __init__(self, max_sigma: float) -> None:
        self.max_sigma = max_sigma

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        sigma = self.max_sigma * torch.rand(()).item()
        return (tensor + sigma * torch.randn_like(tensor)).clamp(0, 1)
