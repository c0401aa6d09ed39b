"""Fixtures shared across the suite. Tests use the procedural phantom dataset, never the real data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

# At most two intra-op threads (the machines have two cores): more only oversubscribes them.
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small phantom dataset in the RSNA layout (32 px, 400 patients), written once per session."""
    from shared.datasets.phantom import write_phantom_dataset

    return write_phantom_dataset(
        tmp_path_factory.mktemp("phantom"), num_patients=400, image_size=32, positive_fraction=0.4, seed=0
    )


def blob_images(rng: np.random.Generator, positive: np.ndarray) -> np.ndarray:
    """28 x 28 uint8 images: a dark noisy background, plus a bright blob for the positives."""
    yy, xx = np.mgrid[0:28, 0:28]
    images = 30.0 + rng.normal(0.0, 4.0, (len(positive), 28, 28))
    for image, is_positive in zip(images, positive, strict=True):
        if is_positive:
            cy, cx = rng.uniform(9, 19, 2)
            image += 190 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 3.0**2))
    return np.clip(images, 0, 255).round().astype(np.uint8)


@pytest.fixture(scope="session")
def blob_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PneumoniaMNIST-format npz: train 64 (2/3 pneumonia), val 8, and a test split the GAN must never see."""
    rng = np.random.default_rng(0)
    splits = {"train": np.arange(64) % 3 != 0, "val": np.arange(8) % 2 == 0, "test": np.ones(12, dtype=bool)}
    arrays = {}
    for split, positive in splits.items():
        arrays[f"{split}_images"] = blob_images(rng, positive)
        arrays[f"{split}_labels"] = positive.astype(np.uint8)[:, None]
    path = tmp_path_factory.mktemp("blobs") / "pneumoniamnist.npz"
    np.savez(path, **arrays)
    return path
