"""Image-quality measures: SSIM against skimage, Fréchet distance properties, the memorization check, Grad-CAM."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from services.analyzer.image_quality import (
    FID_WEIGHTS_NAME,
    describe,
    frechet_distance,
    frechet_with_floor,
    inception_weights,
    memorization_check,
    nearest_neighbours,
    ssim_distribution,
    ssim_matrix,
)
from shared.datasets import PNEUMONIA, load_dataset
from shared.gradcam import gradcam_samples, last_conv_layer
from shared.models.classifier import build_classifier, classifier_config, classifier_transform
from shared.splits import develop_and_holdout


@pytest.fixture(scope="module")
def develop(phantom_dir: Path):
    return develop_and_holdout(load_dataset("phantom", phantom_dir))[0]


@pytest.fixture(scope="module")
def real_pixels(develop) -> np.ndarray:
    """The development images as uint8 N x 32 x 32."""
    return np.stack([np.asarray(develop.load(i)) for i in range(len(develop))])


def test_ssim_matrix_equals_skimage(real_pixels: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    a = real_pixels[:5, :, 3:]  # non-square, 32 x 29
    noisy = np.clip(real_pixels[5:12, :, 3:] + rng.normal(0, 20, (7, 32, 29)), 0, 255).astype(np.uint8)
    ours = ssim_matrix(a, noisy, block=2, chunk=3)  # blocks and chunks that do not divide the sets evenly
    expected = np.array([[structural_similarity(x, y, data_range=255) for y in noisy] for x in a])
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    assert ssim_matrix(a, a).diagonal() == pytest.approx(1.0)


def test_ssim_matrix_rejects_mismatched_sizes() -> None:
    with pytest.raises(ValueError, match="equal-size"):
        ssim_matrix(np.zeros((2, 16, 16), np.uint8), np.zeros((2, 16, 17), np.uint8))


def test_ssim_distribution_reference_excludes_self(real_pixels: np.ndarray) -> None:
    result = ssim_distribution(real_pixels[:4], real_pixels[:6])
    # real vs real: each image's mean SSIM to the 5 others, never its own 1.0
    full = np.array([[structural_similarity(x, y, data_range=255) for y in real_pixels[:6]] for x in real_pixels[:6]])
    expected = (full.sum(axis=1) - 1.0) / 5
    np.testing.assert_allclose(result["real_vs_real_values"], expected, atol=1e-5)
    np.testing.assert_allclose(result["synthetic_vs_real_values"], full[:4].mean(axis=1), atol=1e-5)
    assert result["n_real"] == 6 and result["n_synthetic"] == 4 and result["image_size"] == [32, 32]


def test_frechet_distance_properties() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 6))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shift = np.array([1.0, -2.0, 0.5, 0.0, 0.0, 3.0])
    # same covariance, shifted mean: the distance is the squared shift
    assert frechet_distance(a, a + shift) == pytest.approx(float(shift @ shift), rel=1e-6)
    b = rng.normal(size=(300, 6)) * 2.0
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-6)
    with pytest.raises(ValueError):
        frechet_distance(a[:1], b)


def test_frechet_floor_uses_equal_disjoint_sets() -> None:
    rng = np.random.default_rng(1)
    real = rng.normal(size=(200, 4))
    close = rng.normal(size=(150, 4))
    far = rng.normal(loc=5.0, size=(150, 4))
    near_result, far_result = frechet_with_floor(real, close), frechet_with_floor(real, far)
    assert near_result["n_per_set"] == 100 and near_result["feature_dim"] == 4
    assert near_result["real_vs_real"] == pytest.approx(frechet_distance(real[:100], real[100:200]))
    assert near_result["real_vs_synthetic"] == pytest.approx(frechet_distance(real[:100], close[:100]))
    assert near_result["ratio"] < 5 < far_result["ratio"]


def test_memorization_flags_copies_not_noise(real_pixels: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    exact_copy = real_pixels[5]
    noisy_copy = np.clip(real_pixels[9] + rng.integers(-2, 3, real_pixels[9].shape), 0, 255).astype(np.uint8)
    noise = [rng.integers(0, 256, (32, 32), dtype=np.uint8) for _ in range(3)]
    synthetic = np.stack([noise[0], exact_copy, noise[1], noisy_copy, noise[2]])
    result = memorization_check(synthetic, real_pixels, threshold=0.95)
    assert result["n_flagged"] == 2
    assert result["flagged_indices"] == [1, 3]  # most similar first: the exact copy
    assert result["nearest_real"][1] == 5 and result["nearest_real"][3] == 9
    assert result["nearest_ssim_values"][1] == pytest.approx(1.0)
    assert max(result["nearest_ssim_values"][i] for i in (0, 2, 4)) < 0.5
    assert result["n_real"] == len(real_pixels) and result["real_nearest_ssim"]["max"] < 1.0
    assert result["feature_distance"] is None


def test_memorization_feature_neighbours(real_pixels: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    real_features = rng.normal(size=(len(real_pixels), 8))
    synthetic = real_pixels[[3, 7]]
    result = memorization_check(synthetic, real_pixels, 0.95, real_features[[3, 7]], real_features)
    features = result["feature_distance"]
    assert features["nearest_real"] == [3, 7]
    assert features["synthetic_min"] == pytest.approx(0.0, abs=1e-9)
    assert features["real_median"] > 0  # a real image is never matched to itself
    assert features["same_nearest_as_ssim"] == 1.0


def test_nearest_neighbours_excludes_self_and_chunks() -> None:
    points = np.array([[0.0], [1.0], [3.0], [3.5]])
    index, distance = nearest_neighbours(points, points, exclude=np.arange(4), chunk=3)
    assert index.tolist() == [1, 0, 3, 2]
    assert distance.tolist() == pytest.approx([1.0, 1.0, 0.5, 0.5])


def test_describe_decodes_once_into_pixels_and_penultimate_features(develop) -> None:
    torch.manual_seed(0)
    model = build_classifier("resnet18", 2, 1, 16, weights="none").eval()
    config = classifier_config("resnet18", 1, 16, "baseline", "none")
    pixels, features = describe(develop, [0, 3, 4], (20, 24), model, classifier_transform(config, False), batch_size=2)
    assert pixels.shape == (3, 24, 20) and pixels.dtype == np.uint8
    assert features.shape == (3, 512)  # resnet18's avgpool output
    inputs = torch.stack([classifier_transform(config, False)(develop.load(i)) for i in (0, 3, 4)])
    with torch.no_grad():
        expected = torch.nn.Sequential(*list(model.children())[:-1])(inputs).flatten(1)
    np.testing.assert_allclose(features, expected.numpy(), rtol=1e-4, atol=1e-5)
    pixels_only, none = describe(develop, [1], (32, 32))
    assert none is None
    np.testing.assert_array_equal(pixels_only[0], np.asarray(develop.load(1)))


def test_inception_weights_are_only_looked_up_in_the_hub_cache(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path, why = inception_weights()
    assert path is None and "not in the torch hub cache" in why and str(tmp_path) in why
    cached = tmp_path / "hub" / "checkpoints" / FID_WEIGHTS_NAME
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"weights")
    assert inception_weights() == (cached, "")


def test_gradcam_maps_and_probabilities(develop) -> None:
    torch.manual_seed(0)
    model = build_classifier("resnet18", 2, 1, 16, weights="none").eval()
    config = classifier_config("resnet18", 1, 16, "baseline", "none")
    assert last_conv_layer(model) is model.layer4[-1].conv2
    images = [develop.load(i) for i in np.flatnonzero(develop.labels == PNEUMONIA)[:2]]
    results = gradcam_samples(model, config, images, torch.device("cpu"))
    inputs = torch.stack([classifier_transform(config, False)(image) for image in images])
    with torch.no_grad():
        expected = torch.softmax(model(inputs), dim=1)[:, PNEUMONIA]
    assert len(results) == 2
    for (pixels, cam, p), p_expected in zip(results, expected.tolist(), strict=True):
        assert pixels.shape == cam.shape == (16, 16)
        assert pixels.min() >= 0.0 and pixels.max() <= 1.0
        assert cam.min() >= 0.0 and cam.max() <= 1.0
        assert p == pytest.approx(p_expected, abs=1e-6)
