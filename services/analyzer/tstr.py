"""Train on synthetic, test on real (TSTR): do a conditional generator's images carry the class information?

A small classifier learns from a balanced set of generated images only and is scored on the real hold-out set;
the same model trained on as many real development images (TRTR) is the yardstick.
"""

from __future__ import annotations

import logging
import tempfile
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from shared.datasets.base import NORMAL, PNEUMONIA, LabelledImages, TorchImageDataset
from shared.errors import ConfigError
from shared.generation import generate_images
from shared.metrics import binary_metrics
from shared.models.classifier import build_classifier, classifier_config, classifier_transform
from shared.runtime import seed_everything
from shared.synthetic import load_synthetic
from shared.training.loop import predict, train_one_epoch

log = logging.getLogger(__name__)

TSTR_ARCH = "resnet18"
LEARNING_RATE = 1e-3
BATCH_SIZE = 32


def balanced_subset(images: LabelledImages, per_class: int, rng: np.random.Generator) -> LabelledImages:
    """`per_class` images of each class, drawn at random."""
    chosen = [
        rng.choice(np.flatnonzero(images.labels == label), per_class, replace=False) for label in (NORMAL, PNEUMONIA)
    ]
    return images.subset(np.concatenate(chosen))


def train_and_test(
    train: LabelledImages,
    test: LabelledImages,
    image_size: int,
    epochs: int,
    seed: int,
    device: torch.device,
    name: str,
) -> dict[str, Any]:
    """Train a fresh small classifier on `train` (same seed, so the same initialisation each call); hold-out metrics."""
    seed_everything(seed)
    config = classifier_config(TSTR_ARCH, 1, image_size, strategy=name, weights="none")
    model = build_classifier(TSTR_ARCH, 2, 1, image_size, weights="none").to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    loader = DataLoader(TorchImageDataset(train, classifier_transform(config, train=True)), BATCH_SIZE, shuffle=True)
    criterion = nn.CrossEntropyLoss()
    for epoch in range(epochs):
        loss, accuracy = train_one_epoch(model, loader, criterion, optimizer, None, device, f"{name} {epoch + 1}")
        log.info("%s epoch %d/%d: train loss %.4f acc %.3f", name, epoch + 1, epochs, loss, accuracy)
    test_loader = DataLoader(TorchImageDataset(test, classifier_transform(config, train=False)), BATCH_SIZE)
    y_true, p_pneumonia, _ = predict(model, test_loader, device)
    return binary_metrics(y_true, p_pneumonia)


def run_tstr(
    generator_path: str,
    develop: LabelledImages,
    holdout: LabelledImages,
    num_images: int,
    epochs: int,
    image_size: int,
    seed: int,
    device: torch.device,
) -> dict[str, Any]:
    """Generate num_images / 2 images per class with a conditional generator, train on them (TSTR) and on as many
    real development images (TRTR), test both on the hold-out set."""
    per_class = min(num_images // 2, *(int((develop.labels == label).sum()) for label in (NORMAL, PNEUMONIA)))
    if per_class < 1:
        raise ConfigError(f"TSTR needs at least one image per class, got --tstr-images {num_images}")
    rng = np.random.default_rng(seed)
    real_train = balanced_subset(develop, per_class, rng)
    with tempfile.TemporaryDirectory(prefix="tstr-") as tmp:
        for label in (NORMAL, PNEUMONIA):
            generate_images(generator_path, tmp, per_class, label, seed, BATCH_SIZE, device)
        synthetic_train = load_synthetic(tmp)
        tstr = train_and_test(synthetic_train, holdout, image_size, epochs, seed, device, "TSTR")
    trtr = train_and_test(real_train, holdout, image_size, epochs, seed, device, "TRTR")
    return {
        "arch": TSTR_ARCH,
        "image_size": image_size,
        "epochs": epochs,
        "n_train": 2 * per_class,
        "n_test": len(holdout),
        "tstr": tstr,
        "trtr": trtr,
    }
