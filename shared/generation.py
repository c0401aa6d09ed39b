"""Drawing labelled synthetic images with a trained DCGAN generator: one latent per (seed, image index), so the same
checkpoint and seed give byte-identical files whatever the batching; manifest.csv records each file."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from shared.checkpoints import load_checkpoint
from shared.datasets import CLASS_NAMES
from shared.errors import CheckpointError, ConfigError
from shared.images import save_png, sha256_file
from shared.models.dcgan import Generator
from shared.synthetic import MANIFEST_NAME, ManifestRow, read_manifest, write_manifest
from shared.transforms import to_uint8

log = logging.getLogger(__name__)

LABELS = {name: label for label, name in CLASS_NAMES.items()}  # "normal" -> 0, "pneumonia" -> 1


def resolve_label(config: dict[str, Any], label: int | None, path: Path) -> int:
    """The class to generate: the requested one for a conditional generator, else the generator's own."""
    if config["conditional"]:
        if label is None:
            raise ConfigError(f"{path} is a conditional generator: choose the class with --label normal|pneumonia")
        return label
    if config["label"] is None:
        raise CheckpointError(
            f"{path} is an unconditional generator trained on all classes: its images have no label; "
            "train with --train-on positive or --conditional"
        )
    if label is not None and label != config["label"]:
        raise CheckpointError(
            f"{path} only generates {CLASS_NAMES[config['label']]} images, not {CLASS_NAMES[label]} (--label)"
        )
    return config["label"]


def latent_batch(seed: int, indices: range, latent_dim: int) -> torch.Tensor:
    """len(indices) x latent_dim; row i from its own RNG seeded by (seed, index), so it never depends on batching."""
    rows = [np.random.default_rng(np.random.SeedSequence([seed, i])).standard_normal(latent_dim) for i in indices]
    return torch.from_numpy(np.stack(rows).astype(np.float32))


def load_generator(checkpoint_path: str | Path, device: torch.device) -> tuple[Generator, dict[str, Any]]:
    """The generator from a `dcgan-generator` checkpoint, in eval mode, and its config."""
    checkpoint = load_checkpoint(checkpoint_path, "dcgan-generator")
    config = checkpoint["config"]
    generator = Generator.from_config(config)
    try:
        generator.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"{checkpoint_path}: weights do not match its config ({exc})") from exc
    return generator.to(device).eval(), config


@torch.no_grad()
def generate_images(
    checkpoint_path: str | Path,
    output_dir: str | Path,
    num_images: int,
    label: int | None,
    seed: int,
    batch_size: int,
    device: torch.device,
    on_batch: Callable[[int], None] | None = None,
) -> list[ManifestRow]:
    """Write `num_images` PNGs of class `label` (None: the generator's own) and merge them into manifest.csv.

    `on_batch(images written so far)` runs after each batch (progress reports); if it raises, generation stops
    before the manifest is written.
    """
    if num_images <= 0 or batch_size <= 0:
        raise ConfigError(f"--num-images and --batch-size must be positive, got {num_images} and {batch_size}")
    checkpoint_path, output_dir = Path(checkpoint_path), Path(output_dir)
    generator, config = load_generator(checkpoint_path, device)
    label = resolve_label(config, label, checkpoint_path)
    digest = sha256_file(checkpoint_path)
    output_dir.mkdir(parents=True, exist_ok=True)

    rows: list[ManifestRow] = []
    for start in tqdm(range(0, num_images, batch_size), desc="generating", unit="batch"):
        indices = range(start, min(start + batch_size, num_images))
        noise = latent_batch(seed, indices, config["latent_dim"]).to(device)
        labels = torch.full((len(indices),), label, device=device) if config["conditional"] else None
        pixels = to_uint8(generator(noise, labels))  # N x H x W (gray) or N x H x W x 3 (RGB)
        for index, image in zip(indices, pixels, strict=True):
            name = f"synthetic_{CLASS_NAMES[label]}_{index:06d}.png"
            save_png(image, output_dir / name)
            rows.append(ManifestRow(name, label, seed, index, digest))
        if on_batch is not None:
            on_batch(len(rows))

    merged = {row.file: row for row in read_manifest(output_dir)} if (output_dir / MANIFEST_NAME).is_file() else {}
    merged.update((row.file, row) for row in rows)
    write_manifest(output_dir, sorted(merged.values(), key=lambda row: row.file))
    return rows
