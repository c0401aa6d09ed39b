"""MedMNIST-C's PneumoniaMNIST corruptions (shared.corruptions): each as MedMNIST-C defines it, graded by severity,
reproducible image by image, and a corrupted set that scores like the hold-out it shifts."""

from __future__ import annotations

import io

import numpy as np
import pytest
import skimage.util
import torchvision.transforms.functional as TF
from PIL import Image, ImageEnhance

from shared.corruptions import CORRUPTIONS, SEVERITIES, CorruptedImages, corrupt, image_rng, shift_names
from shared.datasets.base import ArrayImages


def chest_like(seed: int, size: int = 28) -> np.ndarray:
    """A grey image with two dark lung fields, a bright mediastinum and texture: what the corruptions act on."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    image = 0.75 - 0.45 * (((x - 0.3) / 0.18) ** 2 + ((y - 0.5) / 0.32) ** 2 < 1)
    image -= 0.45 * (((x - 0.7) / 0.18) ** 2 + ((y - 0.5) / 0.32) ** 2 < 1)
    image += 0.1 * rng.normal(size=image.shape)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


IMAGES = [chest_like(seed) for seed in range(8)]


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_every_severity_gives_a_uint8_image_of_the_same_shape_reproducibly(name: str) -> None:
    for severity in SEVERITIES:
        first = corrupt(IMAGES[0], name, severity, image_rng(0, name, severity, 7))
        again = corrupt(IMAGES[0], name, severity, image_rng(0, name, severity, 7))
        assert first.dtype == np.uint8 and first.shape == IMAGES[0].shape
        np.testing.assert_array_equal(first, again)
    assert not np.array_equal(corrupt(IMAGES[0], name, 5, image_rng(0, name, 5, 7)), IMAGES[0])


def total_variation(image: np.ndarray) -> float:
    image = image.astype(float)
    return float(np.abs(np.diff(image, axis=0)).mean() + np.abs(np.diff(image, axis=1)).mean())


def effect(name: str, clean: np.ndarray, corrupted: np.ndarray) -> float:
    """How far a corruption moved an image: the detail it removed (loss of total variation) for a blur or
    pixelation, else the mean absolute change of the pixels."""
    if name in ("gaussian_blur", "pixelate"):
        return total_variation(clean) - total_variation(corrupted)
    return float(np.abs(corrupted.astype(float) - clean).mean())


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_a_higher_severity_moves_the_image_further(name: str) -> None:
    """The effect over eight images: non-decreasing from severity 1 to 5, and severity 5 clearly above severity 1."""
    change = [
        np.mean(
            [effect(name, image, corrupt(image, name, s, image_rng(0, name, s, i))) for i, image in enumerate(IMAGES)]
        )
        for s in SEVERITIES
    ]
    assert all(later >= earlier - 0.05 for earlier, later in zip(change, change[1:], strict=False)), change
    assert change[-1] > 1.2 * change[0] > 0, change


def test_the_definitions_are_medmnist_c_s() -> None:
    """Each corruption restated as MedMNIST-C computes it (medmnistc/corruptions/*.py: the same library calls on the
    8-bit image, [0, 1] noise arithmetic truncated back to uint8), with its severity parameters."""
    image = IMAGES[1]
    pil = Image.fromarray(image)
    unit = image / 255.0

    def same(name: str, severity: int, expected: np.ndarray, seed: int = 3) -> None:
        np.testing.assert_array_equal(corrupt(image, name, severity, np.random.default_rng(seed)), expected)

    same("brightness_up", 5, np.asarray(ImageEnhance.Brightness(pil).enhance(1.5)))
    same("brightness_down", 2, np.asarray(ImageEnhance.Brightness(pil).enhance(0.8)))
    same("contrast_up", 5, np.asarray(ImageEnhance.Contrast(pil).enhance(1.6)))
    same("contrast_down", 5, np.asarray(ImageEnhance.Contrast(pil).enhance(0.4)))
    same("gamma_corr_up", 3, np.asarray(TF.adjust_gamma(pil, 1.3, gain=1)))
    same("gamma_corr_down", 4, np.asarray(TF.adjust_gamma(pil, 0.6, gain=1)))
    same("gaussian_blur", 5, np.asarray(TF.gaussian_blur(pil, kernel_size=11)))
    small = pil.resize((int(28 * 0.4), int(28 * 0.4)), Image.Resampling.BOX)
    same("pixelate", 5, np.asarray(small.resize((28, 28), Image.Resampling.BOX)))
    buffer = io.BytesIO()
    pil.save(buffer, "JPEG", quality=7)
    same("jpeg_compression", 5, np.asarray(Image.open(buffer)))
    noise = np.random.default_rng(3).normal(size=image.shape, scale=0.08)
    same("gaussian_noise", 5, (np.clip(unit + noise, 0, 1) * 255).astype(np.uint8))
    noise = np.random.default_rng(3).normal(size=image.shape, scale=0.20)
    same("speckle_noise", 5, (np.clip(unit + unit * noise, 0, 1) * 255).astype(np.uint8))
    same("shot_noise", 5, (np.clip(np.random.default_rng(3).poisson(unit * 80) / 80, 0, 1) * 255).astype(np.uint8))


def test_impulse_noise_flips_the_fraction_scikit_image_flips() -> None:
    """Salt and pepper as scikit-image's random_noise(mode='s&p') draws it (MedMNIST-C's call): about `amount` of
    the pixels set to 0 or 255, half each."""
    image = np.full((200, 200), 128, dtype=np.uint8)
    ours = corrupt(image, "impulse_noise", 5, np.random.default_rng(0))  # amount 0.02
    theirs = (skimage.util.random_noise(image / 255.0, mode="s&p", amount=0.02, rng=0) * 255).astype(np.uint8)
    for result in (ours, theirs):
        assert abs((result != 128).mean() - 0.02) < 0.004
        assert abs((result == 255).mean() - (result == 0).mean()) < 0.004
        assert set(np.unique(result)) == {0, 128, 255}


def test_unknown_names_severities_and_images_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown corruption 'fog'"):
        corrupt(IMAGES[0], "fog", 1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="severity must be one of"):
        corrupt(IMAGES[0], "pixelate", 6, np.random.default_rng(0))
    with pytest.raises(ValueError, match="uint8 H x W"):
        corrupt(IMAGES[0].astype(np.float32), "pixelate", 1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown corruption"):
        CorruptedImages(ArrayImages(np.stack(IMAGES), [str(i) for i in range(8)], [0] * 8), "fog", 1)


def test_a_corrupted_set_keeps_labels_patients_and_each_image_s_stream_in_a_subset() -> None:
    source = ArrayImages(np.stack(IMAGES), [f"p{i}" for i in range(8)], [0, 1] * 4)
    shifted = CorruptedImages(source, "gaussian_noise", 3, seed=11)
    assert list(shifted.labels) == list(source.labels) and list(shifted.patient_ids) == list(source.patient_ids)
    whole = [np.asarray(shifted.load(i)) for i in range(8)]
    subset = shifted.subset([6, 2])
    np.testing.assert_array_equal(np.asarray(subset.load(0)), whole[6])
    np.testing.assert_array_equal(np.asarray(subset.load(1)), whole[2])
    assert list(subset.labels) == [0, 0] and list(subset.patient_ids) == ["p6", "p2"]
    np.testing.assert_array_equal(np.asarray(CorruptedImages(source, "gaussian_noise", 3, seed=11).load(4)), whole[4])
    assert not np.array_equal(np.asarray(CorruptedImages(source, "gaussian_noise", 3, seed=12).load(4)), whole[4])
    assert shift_names(["pixelate", "shot_noise"], [1, 5]) == [
        "pixelate@1",
        "pixelate@5",
        "shot_noise@1",
        "shot_noise@5",
    ]
