"""Image preprocessing for the GANs: PIL grayscale in, tensors in [-1, 1] out, and back to uint8 pixels."""

from __future__ import annotations

import numpy as np
import torch
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
