"""Grad-CAM (pytorch-grad-cam) on the classifier's last convolution: where the model looks for pneumonia.

Used by the analysis (services.analyzer) and by the classifier service's /explanations (shared.serving.handler).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib
import numpy as np
import torch
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from shared.datasets.base import PNEUMONIA
from shared.models.classifier import classifier_transform
from shared.models.ensemble import FoldEnsemble


def last_conv_layer(model: nn.Module) -> nn.Conv2d:
    """The last nn.Conv2d in module order (a ResNet's final block's last convolution)."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no convolution for Grad-CAM")
    return convs[-1]


def target_layers(model: nn.Module) -> list[nn.Conv2d]:
    """Where Grad-CAM looks: the last convolution, or each member's for a fold-ensemble (pytorch-grad-cam scales each
    member's map to [0, 1] and averages them)."""
    if isinstance(model, FoldEnsemble):
        return [last_conv_layer(member) for member in model.members]
    return [last_conv_layer(model)]


def gradcam_samples(
    model: nn.Module, config: dict[str, Any], images: Sequence[Image.Image], device: torch.device
) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """For each image: (the image as the model sees it, values in [0, 1], S x S; the Grad-CAM map of the pneumonia
    output, S x S in [0, 1]; the model's P(pneumonia))."""
    transform = classifier_transform(config, train=False)
    inputs = torch.stack([transform(image) for image in images]).to(device)  # N x C x S x S
    with torch.no_grad():
        p_pneumonia = torch.softmax(model(inputs), dim=1)[:, PNEUMONIA].cpu().numpy()  # N
    with GradCAM(model=model, target_layers=target_layers(model)) as cam:
        maps = cam(input_tensor=inputs, targets=[ClassifierOutputTarget(PNEUMONIA)] * len(images))  # N x S x S
    size = (config["image_size"], config["image_size"])
    shown = [np.asarray(image.resize(size, Image.Resampling.BILINEAR), dtype=np.float32) / 255 for image in images]
    return [(pixels, heat, float(p)) for pixels, heat, p in zip(shown, maps, p_pneumonia, strict=True)]


def heatmap_overlay(
    image: Image.Image, heat: np.ndarray, min_side: int = 224, max_side: int = 1024, image_weight: float = 0.5
) -> Image.Image:
    """An RGB picture of `image` with the Grad-CAM map `heat` (any size, values in [0, 1]) over it in the jet
    colour map, at the image's size scaled so that its longer side lies within [min_side, max_side]."""
    longer = max(image.size)
    scale = min_side / longer if longer < min_side else min(1.0, max_side / longer)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    gray = np.asarray(image.convert("L").resize(size, Image.Resampling.BILINEAR), dtype=np.float32) / 255
    heat_image = Image.fromarray(np.asarray(heat, dtype=np.float32)).resize(size, Image.Resampling.BILINEAR)
    mask = np.clip(np.asarray(heat_image), 0.0, 1.0)
    colours = matplotlib.colormaps["jet"](mask)[..., :3]  # H x W x 3 in [0, 1]
    blended = image_weight * gray[..., None] + (1 - image_weight) * colours
    return Image.fromarray(np.round(blended * 255).astype(np.uint8))
