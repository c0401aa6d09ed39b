"""DCGAN networks, GAN preprocessing and the pixel Fréchet distance."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from shared.models.dcgan import Discriminator, Generator, for_inference
from shared.quality import pixel_frechet_distance
from shared.transforms import gan_transform, to_uint8


@pytest.mark.parametrize("image_size", [16, 32, 64])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("num_classes", [0, 2])
def test_generator_and_discriminator_shapes(image_size: int, channels: int, num_classes: int) -> None:
    torch.manual_seed(0)
    generator = Generator(
        latent_dim=10, feature_maps=4, channels=channels, image_size=image_size, num_classes=num_classes
    )
    discriminator = Discriminator(feature_maps=4, channels=channels, image_size=image_size, num_classes=num_classes)
    labels = torch.tensor([0, 1, 1]) if num_classes else None
    images = generator(torch.randn(3, 10), labels)
    assert images.shape == (3, channels, image_size, image_size)
    assert images.min() >= -1 and images.max() <= 1  # Tanh output
    logits = discriminator(images, labels)
    assert logits.shape == (3,)


def test_64_px_generator_has_the_seed_layer_widths() -> None:
    generator = Generator()  # latent 100, ngf 64, 3 channels, 64 px
    widths = [m.out_channels for m in generator.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert widths == [512, 256, 128, 64, 3]
    smaller = Generator(image_size=32)  # drops the widest layer
    assert [m.out_channels for m in smaller.modules() if isinstance(m, nn.ConvTranspose2d)] == [256, 128, 64, 3]


@pytest.mark.parametrize("image_size", [8, 48, 100, 0])
def test_bad_image_size_is_refused(image_size: int) -> None:
    with pytest.raises(ValueError, match="power of two"):
        Generator(image_size=image_size)
    with pytest.raises(ValueError, match="power of two"):
        Discriminator(image_size=image_size)


def test_conditional_networks_use_the_label() -> None:
    torch.manual_seed(0)
    generator = Generator(latent_dim=8, feature_maps=4, channels=1, image_size=16, num_classes=2).eval()
    discriminator = Discriminator(feature_maps=4, channels=1, image_size=16, num_classes=2).eval()
    z = torch.randn(1, 8).repeat(2, 1)  # the same latent twice
    images = generator(z, torch.tensor([0, 1]))
    assert not torch.equal(images[0], images[1])
    same_image = images[:1].repeat(2, 1, 1, 1)
    logits = discriminator(same_image, torch.tensor([0, 1]))
    assert logits[0] != logits[1]
    with pytest.raises(ValueError, match="needs class labels"):
        generator(z)
    with pytest.raises(ValueError, match="takes no labels"):
        Generator(latent_dim=8, feature_maps=4, channels=1, image_size=16)(z, torch.tensor([0, 1]))


def test_discriminator_norms() -> None:
    kinds = {
        norm: {type(m) for m in Discriminator(4, 1, 16, norm=norm).modules()} for norm in ("batch", "instance", "none")
    }
    assert nn.BatchNorm2d in kinds["batch"] and nn.InstanceNorm2d not in kinds["batch"]
    assert nn.InstanceNorm2d in kinds["instance"] and nn.BatchNorm2d not in kinds["instance"]
    assert nn.BatchNorm2d not in kinds["none"] and nn.InstanceNorm2d not in kinds["none"]
    with pytest.raises(ValueError, match="norm must be one of"):
        Discriminator(4, 1, 16, norm="layer")


def test_dcgan_weight_init() -> None:
    torch.manual_seed(0)
    generator = Generator()
    conv = generator.main[3].weight  # 512 x 256 x 4 x 4 weights
    assert abs(conv.mean().item()) < 1e-3 and abs(conv.std().item() - 0.02) < 1e-3
    norm = generator.main[1].weight  # 512 scales
    assert abs(norm.mean().item() - 1.0) < 0.01 and abs(norm.std().item() - 0.02) < 0.01


def test_for_inference_measures_fresh_batch_norm_statistics() -> None:
    torch.manual_seed(0)
    generator = Generator(latent_dim=8, feature_maps=8, channels=1, image_size=16)
    before = {k: v.clone() for k, v in generator.state_dict().items()}
    model = for_inference(generator, seed=3)
    assert not model.training and generator.training
    assert all(torch.equal(before[k], v) for k, v in generator.state_dict().items())  # original untouched

    # Freshly initialised running statistics (mean 0, var 1) are far from the real ones; the copy's match a
    # large train-mode batch, so eval-mode images look like training-time images.
    z = torch.randn(512, 8)
    with torch.no_grad():
        batch_mode = generator(z)
        stale = generator.eval()(z)
        fresh = model(z)
    assert (fresh - batch_mode).abs().mean() < 0.1 * (stale - batch_mode).abs().mean()
    again = for_inference(generator.train(), seed=3)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())  # reproducible


@pytest.mark.parametrize("channels", [1, 3])
def test_gan_transform_maps_pixels_to_minus_one_one_and_back(channels: int) -> None:
    pixels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    tensor = gan_transform(16, channels)(Image.fromarray(pixels, mode="L"))
    assert tensor.shape == (channels, 16, 16)
    assert tensor.min().item() == -1.0 and tensor.max().item() == 1.0  # black -> -1, white -> 1
    back = to_uint8(tensor[None])[0]
    expected = pixels if channels == 1 else np.repeat(pixels[..., None], 3, axis=2)
    np.testing.assert_array_equal(back, expected)


def test_gan_transform_resizes_and_refuses_other_channel_counts() -> None:
    image = Image.fromarray(np.zeros((28, 40), dtype=np.uint8), mode="L")
    assert gan_transform(16, 1)(image).shape == (1, 16, 16)
    with pytest.raises(ValueError, match="channels"):
        gan_transform(16, 2)


def test_pixel_frechet_distance() -> None:
    rng = np.random.default_rng(0)
    real = rng.random((200, 16, 16)) * 0.5
    assert pixel_frechet_distance(real, real) == pytest.approx(0.0, abs=1e-6)
    # A constant brightness shift c moves only the mean: distance = size^2 * c^2.
    assert pixel_frechet_distance(real, real + 0.25, size=8) == pytest.approx(64 * 0.25**2, rel=1e-4)
    other = rng.random((200, 16, 16)) * 0.5
    assert pixel_frechet_distance(real, other) == pytest.approx(pixel_frechet_distance(other, real), rel=1e-6)
    assert pixel_frechet_distance(real, other) < pixel_frechet_distance(real, other * 0.2)  # less contrast: farther
    with pytest.raises(ValueError, match="N x H x W"):
        pixel_frechet_distance(real, real[0])
