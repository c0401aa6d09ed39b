"""GanTrainingConfig: the options of `pneumonia train-gan` (services.trainer.train_gan)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pneumonia_proto.v1 import trainer_pb2
from pydantic import field_validator, model_validator

from shared.configs.base import StepConfig, option
from shared.configs.limits import (
    MAX_BATCH_SIZE,
    MAX_EPOCHS,
    MAX_IMAGE_SIZE,
    MAX_IMAGES,
    MAX_SEED,
    MAX_WIDTH,
    MAX_WORKERS,
)
from shared.datasets import DATASETS
from shared.models.dcgan import num_resolution_steps


class GanTrainingConfig(StepConfig):
    """Train a DCGAN (or conditional DCGAN, or WGAN-GP) on the development images of a dataset."""

    request_type: ClassVar = trainer_pb2.StartGanJobRequest
    request_only: ClassVar = frozenset({"dataset", "output_prefix", "idempotency_key"})

    dataset: Literal[DATASETS] = option("rsna", "dataset source to train on", kind="layout")  # type: ignore[valid-type]
    data_dir: str = option("./data/processed", "where the dataset lies", kind="layout")
    model_dir: str = option("./models", "checkpoints go to MODEL_DIR/gan/", kind="layout")
    output_dir: str = option("./results", "sample grids go to OUTPUT_DIR/gan_images/", kind="layout")
    results_dir: str = option("./results/metrics", "where gan_training_history.json goes", kind="layout")
    figures_dir: str = option("./results/figures", "where gan_loss_curve.png goes", kind="layout")
    epochs: int = option(50, "total number of epochs (a resumed run may raise it)", gt=0, le=MAX_EPOCHS)
    batch_size: int = option(128, "images per training step", gt=0, le=MAX_BATCH_SIZE)
    lr: float = option(0.0002, "Adam learning rate of both networks", gt=0)
    beta1: float = option(0.5, "Adam beta1 of both networks", ge=0, lt=1)
    latent_dim: int = option(100, "size of the latent vector z", gt=0, le=MAX_WIDTH)
    num_channels: Literal[1, 3] = option(3, "image channels (3 = gray x3)")
    image_size: int = option(64, "image side in pixels, a power of two >= 16", le=MAX_IMAGE_SIZE)
    feature_maps_g: int = option(64, "generator width (ngf)", gt=0, le=MAX_WIDTH)
    feature_maps_d: int = option(64, "discriminator width (ndf)", gt=0, le=MAX_WIDTH)
    workers: int = option(4, "DataLoader worker processes (0 = load in-process)", kind="local", ge=0, le=MAX_WORKERS)
    vis_batch_size: int = option(64, "images in each epoch's sample grid", gt=0, le=MAX_BATCH_SIZE)
    cpu: bool = option(False, "train on the CPU even when CUDA is available")
    train_on: Literal["positive", "all"] | None = option(
        None,
        "images the GAN learns from: positive = pneumonia only (an unconditional GAN's images are labelled "
        "pneumonia), all = both classes (its images then carry no label). Unset: positive, or all with --conditional",
    )
    conditional: bool = option(False, "one class-conditional generator for both classes (trains on all)")
    loss: Literal["bce", "wgan-gp"] = option(
        "bce",
        "bce: DCGAN with a batch-norm discriminator; wgan-gp: Wasserstein loss with gradient penalty and an "
        "instance-norm critic, Adam betas (beta1, 0.9) (Gulrajani et al. 2017)",
    )
    gp_weight: float = option(10.0, "gradient penalty weight (wgan-gp)", ge=0)
    n_critic: int = option(5, "critic steps per generator step (wgan-gp)", gt=0, le=100)
    seed: int = option(0, "seed for weights, shuffling, noise and --max-images", ge=0, le=MAX_SEED)
    max_images: int | None = option(
        None, "train on a seeded, class-stratified subset of this many images", gt=0, le=MAX_IMAGES
    )
    resume: bool = option(False, "continue from MODEL_DIR/gan/checkpoint_last.pth (same options)")
    sample_every: int = option(1, "write a sample grid every this many epochs", gt=0, le=MAX_EPOCHS)

    @field_validator("image_size")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        num_resolution_steps(value)  # ValueError saying why
        return value

    @model_validator(mode="after")
    def _consistent(self) -> GanTrainingConfig:
        if self.conditional and self.train_on == "positive":
            raise ValueError("--conditional learns both classes; it cannot use --train-on positive")
        return self

    @property
    def effective_train_on(self) -> str:
        """--train-on, or its default: positive, or all with --conditional."""
        return self.train_on or ("all" if self.conditional else "positive")
