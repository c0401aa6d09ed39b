"""Generate labelled synthetic chest X-rays with a trained DCGAN generator.

The checkpoint carries its own configuration, so --model-path is all it needs; --latent-dim and --feature-maps-g
only check it. Image i is drawn from a latent seeded by (--seed, i): the same checkpoint and seed give
byte-identical files. By default the images go into .npz shards of --shard-size images, stored while the generator
draws; --layout png writes one PNG per image instead. The output folder's manifest.csv records each shard (its
sha256, label, seed, index range and generator) or each PNG. A run killed midway resumes when run again: the shards
it wrote are kept (see shared.generation).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared.checkpoints import load_checkpoint
from shared.configs import GenerationConfig
from shared.datasets import CLASS_NAMES
from shared.errors import CheckpointError
from shared.generation import LABELS, generate_images, latent_batch, load_generator, resolve_label
from shared.runtime import select_device
from shared.synthetic import MANIFEST_NAME, ManifestRow

__all__ = ["LABELS", "generate", "generate_images", "latent_batch", "load_generator", "resolve_label"]

log = logging.getLogger(__name__)

CHECKED_OPTIONS = ("latent_dim", "feature_maps_g")  # given: must match the checkpoint


def add_arguments(parser: argparse.ArgumentParser) -> None:
    GenerationConfig.add_arguments(parser)


def check_options(options: GenerationConfig, config: dict[str, Any], path: Path) -> None:
    """Refuse an option the user gave whose value contradicts the checkpoint."""
    for key in CHECKED_OPTIONS:
        value = getattr(options, key)
        if value is not None and value != config[key]:
            flag = GenerationConfig.flag(key)
            raise CheckpointError(
                f"{flag} {value} contradicts {path}, trained with {key} = {config[key]}; "
                f"omit {flag} to use the checkpoint's value"
            )


def generate(options: GenerationConfig, on_batch: Callable[[int], None] | None = None) -> list[ManifestRow]:
    """Write the images and manifest.csv the options ask for; the rows written."""
    device = select_device(options.cpu)
    path = Path(options.model_path)
    check_options(options, load_checkpoint(path, "dcgan-generator")["config"], path)
    label = None if options.label is None else LABELS[options.label]
    return generate_images(
        path, options.output_dir, options.num_images, label, options.seed, options.batch_size, device, on_batch,
        layout=options.layout, shard_size=options.shard_size,
    )  # fmt: skip


def main(args: argparse.Namespace) -> int:
    options = GenerationConfig.from_args(args)
    rows = generate(options)
    log.info("wrote %d images with generator sha256 %s", len(rows), rows[0].generator_sha256[:12])
    stored = "PNG files" if options.layout == "png" else f"shards of up to {options.shard_size}"
    print(f"{len(rows)} {CLASS_NAMES[rows[0].label]} images ({stored}) and {MANIFEST_NAME} in {options.output_dir}")
    return 0
