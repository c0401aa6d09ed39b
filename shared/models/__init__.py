"""Neural network architectures shared by the training, generation and serving code."""

from shared.models.dcgan import Discriminator, Generator

__all__ = ["Discriminator", "Generator"]
