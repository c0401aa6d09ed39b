"""The classifier: shapes for each stem and channel count, weights loading, freezing, preprocessing, checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from shared.errors import CheckpointError, ConfigError
from shared.models.classifier import (
    build_classifier,
    classifier_config,
    classifier_transform,
    imagenet_weights_path,
    load_classifier,
    save_classifier,
    set_train_mode,
)


@pytest.fixture
def hub_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache, so that tests never see (or fetch) real ImageNet weights."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return tmp_path / "hub"


def write_fake_imagenet_weights(arch: str) -> dict[str, torch.Tensor]:
    """A 1000-class torchvision state dict at the cache path torchvision's weights would have."""
    torch.manual_seed(1)
    state = torchvision.models.get_model(arch, weights=None).state_dict()
    path = imagenet_weights_path(arch)
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return state


@pytest.mark.parametrize(
    ("channels", "size", "small_stem"),
    [(1, 28, True), (3, 32, True), (1, 80, False), (3, 96, False)],
)
def test_shapes_for_channels_and_stems(channels: int, size: int, small_stem: bool) -> None:
    model = build_classifier("resnet18", 2, channels, size, weights="none").eval()
    assert model.conv1.in_channels == channels
    assert model.conv1.kernel_size == ((3, 3) if small_stem else (7, 7))
    assert isinstance(model.maxpool, torch.nn.Identity) == small_stem
    with torch.no_grad():
        assert model(torch.zeros(2, channels, size, size)).shape == (2, 2)
        # The small stem keeps the full resolution: 64 x S x S after conv1 + maxpool; ImageNet's gives S/4.
        stem = model.maxpool(model.relu(model.bn1(model.conv1(torch.zeros(1, channels, size, size)))))
    assert stem.shape[-1] == (size if small_stem else size // 4)


def test_unknown_arch_and_channels_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="--arch"):
        build_classifier("vgg16", weights="none")
    with pytest.raises(ConfigError, match="--channels"):
        build_classifier("resnet18", in_channels=2, weights="none")


def test_missing_imagenet_weights_name_weights_none(hub_dir: Path) -> None:
    with pytest.raises(ConfigError, match="--weights none") as error:
        build_classifier("resnet18", image_size=224, weights="imagenet")
    assert str(hub_dir) in str(error.value)
    assert not hub_dir.exists()  # nothing was downloaded


def test_imagenet_weights_load_from_cache_and_sum_rgb_for_one_channel(hub_dir: Path) -> None:
    state = write_fake_imagenet_weights("resnet18")
    rgb = build_classifier("resnet18", 2, 3, 224, weights="imagenet")
    gray = build_classifier("resnet18", 2, 1, 224, weights="imagenet")
    assert torch.equal(rgb.conv1.weight, state["conv1.weight"])
    assert torch.equal(rgb.layer3[0].conv1.weight, state["layer3.0.conv1.weight"])
    assert torch.allclose(gray.conv1.weight, state["conv1.weight"].sum(dim=1, keepdim=True))
    assert rgb.fc.out_features == 2
    # A grey image seen as R = G = B gives the same stem response as the one-channel model.
    x = torch.rand(1, 1, 224, 224)
    assert torch.allclose(rgb.conv1(x.repeat(1, 3, 1, 1)), gray.conv1(x), atol=1e-5)


def test_frozen_backbone_trains_only_fc_and_keeps_batchnorm_statistics(hub_dir: Path) -> None:
    write_fake_imagenet_weights("resnet18")
    model = build_classifier("resnet18", 2, 3, 96, weights="imagenet", freeze_backbone=True)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"fc.weight", "fc.bias"}
    running_mean = model.bn1.running_mean.clone()
    set_train_mode(model)
    assert model.fc.training and not model.bn1.training
    model(torch.rand(4, 3, 96, 96))
    assert torch.equal(model.bn1.running_mean, running_mean)


def test_freezing_random_or_replaced_stem_is_refused(hub_dir: Path) -> None:
    with pytest.raises(ConfigError, match="--unfreeze"):
        build_classifier("resnet18", image_size=96, weights="none", freeze_backbone=True)
    write_fake_imagenet_weights("resnet18")
    with pytest.raises(ConfigError, match="--unfreeze"):
        build_classifier("resnet18", image_size=28, weights="imagenet", freeze_backbone=True)


def test_unfrozen_model_trains_everything_in_train_mode() -> None:
    model = build_classifier("resnet18", 2, 1, 28, weights="none")
    set_train_mode(model)
    assert all(p.requires_grad for p in model.parameters())
    assert model.bn1.training


def test_transform_shapes_and_normalisation() -> None:
    image = Image.fromarray(np.full((50, 40), 255, dtype=np.uint8), mode="L")
    for channels in (1, 3):
        config = classifier_config("resnet18", channels, 32, "baseline", "none")
        for train in (False, True):
            tensor = classifier_transform(config, train)(image)
            assert tensor.shape == (channels, 32, 32)
        plain = classifier_transform(config, train=False)(image)
        expected = (1.0 - torch.tensor(config["mean"])) / torch.tensor(config["std"])
        assert torch.allclose(plain[:, 16, 16], expected, atol=1e-5)


def test_train_transform_augments() -> None:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8), mode="L")
    config = classifier_config("resnet18", 1, 32, "baseline", "none")
    torch.manual_seed(0)
    augmented = [classifier_transform(config, train=True)(image) for _ in range(3)]
    assert not torch.equal(augmented[0], augmented[1]) or not torch.equal(augmented[1], augmented[2])
    plain = classifier_transform(config, train=False)
    assert torch.equal(plain(image), plain(image))


def test_strong_augmentation_changes_intensities_and_repeats_under_a_seed() -> None:
    """--augmentation strong: acquisition changes (brightness, contrast, gamma, noise) on top of the geometry, drawn
    from torch's RNG; the evaluation transform ignores it."""
    image = Image.fromarray(np.full((40, 40), 128, dtype=np.uint8), mode="L")  # flat: geometry alone changes nothing
    light = classifier_config("resnet18", 1, 32, "baseline", "none")
    strong = classifier_config("resnet18", 1, 32, "baseline", "none", augmentation="strong")

    def draws(config: dict, seed: int) -> list[torch.Tensor]:
        torch.manual_seed(seed)
        return [classifier_transform(config, train=True)(image) for _ in range(8)]

    centre = [t[0, 12:20, 12:20].mean().item() for t in draws(light, 0)]
    assert max(centre) - min(centre) < 1e-5  # rotations, shifts and zooms of a flat image leave its centre as it was
    changed = draws(strong, 0)
    centre = [t[0, 12:20, 12:20].mean().item() for t in changed]
    assert max(centre) - min(centre) > 0.1  # brightness, contrast and gamma move it
    assert any(t[0].std().item() > 0.05 for t in changed)  # noise on some
    assert all(torch.equal(a, b) for a, b in zip(changed, draws(strong, 0), strict=True))
    assert torch.equal(classifier_transform(strong, train=False)(image), classifier_transform(light, False)(image))
    with pytest.raises(ConfigError, match="augmentation 'heavy'"):
        classifier_transform({**strong, "augmentation": "heavy"}, train=True)


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    config = classifier_config("resnet18", 1, 28, "curriculum", "none")
    model = build_classifier("resnet18", 2, 1, 28, weights="none").eval()
    path = tmp_path / "model.pth"
    save_classifier(path, model, config)
    loaded, loaded_config = load_classifier(path, "cpu")
    assert loaded_config == config
    assert loaded_config["class_names"] == ["normal", "pneumonia"] and loaded_config["small_input_stem"]
    assert not loaded.training
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x))


def test_weights_path_loads_checkpoint_or_state_dict(tmp_path: Path) -> None:
    source = build_classifier("resnet18", 2, 1, 28, weights="none")
    checkpoint, state_file = tmp_path / "clf.pth", tmp_path / "state.pth"
    save_classifier(checkpoint, source, classifier_config("resnet18", 1, 28, "baseline", "none"))
    torch.save(source.state_dict(), state_file)
    for path in (checkpoint, state_file):
        model = build_classifier("resnet18", 2, 1, 28, weights=str(path), freeze_backbone=True)
        assert torch.equal(model.layer2[0].conv1.weight, source.layer2[0].conv1.weight)
    with pytest.raises(CheckpointError, match="do not fit"):
        build_classifier("resnet34", 2, 1, 28, weights=str(checkpoint))
    with pytest.raises(ConfigError, match="not found"):
        build_classifier("resnet18", weights=str(tmp_path / "missing.pth"))


def test_stem_pool_halves_the_feature_maps() -> None:
    plain = build_classifier("resnet18", 2, 1, 28, "none")
    pooled = build_classifier("resnet18", 2, 1, 28, "none", stem_pool=True)
    x = torch.zeros(2, 1, 28, 28)
    after_stem = lambda model: model.maxpool(model.relu(model.bn1(model.conv1(x))))  # noqa: E731
    assert after_stem(plain).shape == (2, 64, 28, 28)
    assert after_stem(pooled).shape == (2, 64, 14, 14)
    assert pooled(x).shape == (2, 2)
    assert classifier_config("resnet18", 1, 28, "baseline", "none", stem_pool=True)["stem_pool"] is True
