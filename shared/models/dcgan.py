"""DCGAN generator and discriminator (Radford et al. 2016), optionally class-conditional.

Follows pytorch/examples dcgan/main.py: a ConvTranspose2d stack from a 1 x 1 latent to the image and a mirrored
Conv2d stack back to one number. At 64 px the layers are exactly the seed's (ngf*8 -> ngf*4 -> ngf*2 -> ngf);
smaller images drop the widest layers, larger ones add wider ones.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

LABEL_EMBEDDING_DIM = 16  # size of the learned class vector a conditional generator appends to z
NORMS = ("batch", "instance", "none")


def num_resolution_steps(image_size: int) -> int:
    """How many factor-2 up/downsampling layers lie between 4 x 4 and `image_size` x `image_size`."""
    if not isinstance(image_size, int) or image_size < 16 or image_size & (image_size - 1):
        raise ValueError(f"image_size must be a power of two >= 16, got {image_size!r}")
    return image_size.bit_length() - 3  # 16 -> 2, 32 -> 3, 64 -> 4


def weights_init(module: nn.Module) -> None:
    """DCGAN initialisation: conv weights N(0, 0.02); norm scales N(1, 0.02), shifts 0."""
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d | nn.InstanceNorm2d) and module.affine:
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def _norm_layer(norm: str, channels: int) -> nn.Module:
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")


class Generator(nn.Module):
    """z (N x latent_dim) [+ class labels (N,)] -> images N x channels x image_size x image_size in [-1, 1]."""

    def __init__(
        self,
        latent_dim: int = 100,
        feature_maps: int = 64,
        channels: int = 3,
        image_size: int = 64,
        num_classes: int = 0,
    ):
        super().__init__()
        steps = num_resolution_steps(image_size)
        self.latent_dim = latent_dim
        self.num_classes = num_classes
        self.embed = nn.Embedding(num_classes, LABEL_EMBEDDING_DIM) if num_classes > 0 else None
        in_dim = latent_dim + (LABEL_EMBEDDING_DIM if num_classes > 0 else 0)

        width = feature_maps * 2 ** (steps - 1)  # ngf*8 at 64 px
        # input is Z (plus the label embedding), going into a convolution: (ngf*8) x 4 x 4 at 64 px
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(in_dim, width, 4, 1, 0, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(True),
        ]
        for _ in range(steps - 1):
            # each block doubles the size and halves the width: (ngf*4) x 8 x 8, (ngf*2) x 16 x 16, (ngf) x 32 x 32
            layers += [
                nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(width // 2),
                nn.ReLU(True),
            ]
            width //= 2
        # (channels) x image_size x image_size
        layers += [nn.ConvTranspose2d(width, channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)
        self.apply(weights_init)

    @classmethod
    def from_config(cls, config: dict) -> Generator:
        """The generator a checkpoint config describes (keys latent_dim, feature_maps_g, num_channels, ...)."""
        return cls(
            latent_dim=config["latent_dim"],
            feature_maps=config["feature_maps_g"],
            channels=config["num_channels"],
            image_size=config["image_size"],
            num_classes=config["num_classes"],
        )

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            if labels is None:
                raise ValueError("a conditional generator needs class labels")
            z = torch.cat([z, self.embed(labels)], dim=1)
        elif labels is not None:
            raise ValueError("an unconditional generator takes no labels")
        return self.main(z[:, :, None, None])  # N x in_dim x 1 x 1


class Discriminator(nn.Module):
    """Images N x channels x image_size x image_size [+ labels (N,)] -> one logit per image (N,).

    Use with BCEWithLogitsLoss (DCGAN) or directly as a critic score (WGAN-GP, with norm="instance"
    or "none": batch norm mixes the samples a gradient penalty treats independently).
    """

    def __init__(
        self,
        feature_maps: int = 64,
        channels: int = 3,
        image_size: int = 64,
        num_classes: int = 0,
        norm: str = "batch",
    ):
        super().__init__()
        steps = num_resolution_steps(image_size)
        self.image_size = image_size
        self.num_classes = num_classes
        # a conditional discriminator sees the label as one more image plane
        self.embed = nn.Embedding(num_classes, image_size * image_size) if num_classes > 0 else None
        in_channels = channels + (1 if num_classes > 0 else 0)

        width = feature_maps
        # input is (channels) x image_size x image_size; first block has no norm, as in DCGAN: (ndf) x 32 x 32
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        for _ in range(steps - 1):
            # each block halves the size and doubles the width: (ndf*2) x 16 x 16, (ndf*4) x 8 x 8, (ndf*8) x 4 x 4
            layers += [
                nn.Conv2d(width, width * 2, 4, 2, 1, bias=False),
                _norm_layer(norm, width * 2),
                nn.LeakyReLU(0.2, True),
            ]
            width *= 2
        # 1 x 1 x 1: the logit
        layers.append(nn.Conv2d(width, 1, 4, 1, 0, bias=False))
        self.main = nn.Sequential(*layers)
        self.apply(weights_init)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            if labels is None:
                raise ValueError("a conditional discriminator needs class labels")
            plane = self.embed(labels).view(-1, 1, self.image_size, self.image_size)
            images = torch.cat([images, plane], dim=1)
        elif labels is not None:
            raise ValueError("an unconditional discriminator takes no labels")
        return self.main(images).view(-1)


@torch.no_grad()
def for_inference(generator: Generator, seed: int = 0, num_images: int = 512, batch_size: int = 128) -> Generator:
    """An eval-mode copy of `generator` whose batch-norm statistics are measured afresh on random latents.

    The running statistics gathered during training lag the generator: they start at mean 0, variance 1 and move
    10% per step, so early in training (or after a short run) eval-mode images come out washed-out gray. The copy
    replaces them by exact averages over `num_images` latents (and uniformly drawn classes), drawn from their own
    seeded RNG, so the result is reproducible and the training state is untouched.
    """
    model = copy.deepcopy(generator).train()
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the batches below
    device = next(model.parameters()).device
    rng = torch.Generator().manual_seed(seed)
    for start in range(0, num_images, batch_size):
        n = min(batch_size, num_images - start)
        z = torch.randn(n, model.latent_dim, generator=rng).to(device)
        labels = torch.randint(model.num_classes, (n,), generator=rng).to(device) if model.num_classes else None
        model(z, labels)
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    return model.eval()
