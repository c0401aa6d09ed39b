"""GenerationConfig: the options of `pneumonia generate-synthetic` (services.generator.generate_synthetic)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pneumonia_proto.v1 import generator_pb2

from shared.configs.base import StepConfig, option
from shared.configs.limits import MAX_BATCH_SIZE, MAX_IMAGES, MAX_SEED, MAX_SHARD_IMAGES, MAX_WIDTH
from shared.shards import DEFAULT_SHARD_SIZE


class GenerationConfig(StepConfig):
    """Generate labelled synthetic chest X-rays with a trained DCGAN generator."""

    request_type: ClassVar = generator_pb2.GenerateRequest
    request_only: ClassVar = frozenset({"checkpoint", "output_prefix"})

    model_path: str = option(description="generator checkpoint (MODEL_DIR/gan/generator_final.pth)", kind="layout")
    output_dir: str = option("./data/synthetic", "where the shards (or PNGs) and manifest.csv go", kind="layout")
    num_images: int = option(5000, "how many images to generate", proto="count", gt=0, le=MAX_IMAGES)
    latent_dim: int | None = option(
        None, "latent size: read from the checkpoint; if given, it must match", kind="local", gt=0, le=MAX_WIDTH
    )
    feature_maps_g: int | None = option(
        None, "generator width: read from the checkpoint; if given, it must match", kind="local", gt=0, le=MAX_WIDTH
    )
    batch_size: int = option(64, "images per generator forward pass", gt=0, le=MAX_BATCH_SIZE)
    cpu: bool = option(False, "generate on the CPU even when CUDA is available", kind="local")
    label: Literal["normal", "pneumonia"] | None = option(
        None, "class to generate: required for a conditional generator; an unconditional one has its own label"
    )
    seed: int = option(0, "seed of the per-image latents", ge=0, le=MAX_SEED)
    layout: Literal["shards", "png"] = option(
        "shards",
        "shards: .npz files of --shard-size images each, written while the generator draws (fast); png: one PNG per "
        "image, for browsing (or export a shard folder later: python -m services.generator.export_pngs)",
        kind="local",
    )
    shard_size: int = option(
        DEFAULT_SHARD_SIZE, "images per shard (--layout shards)", kind="local", gt=0, le=MAX_SHARD_IMAGES
    )
