"""The fold-ensemble (shared.models.ensemble): one classifier made of the fold models, averaging their calibrated
probabilities, that saves, loads, exports, explains and is gated like one ResNet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_classifier_handler import tight_gate

from shared.calibration import Calibration
from shared.gradcam import gradcam_samples, target_layers
from shared.models.classifier import (
    build_classifier,
    classifier_config,
    classifier_transform,
    load_classifier,
    penultimate_features,
    save_classifier,
)
from shared.models.ensemble import FoldEnsemble, describe_model, ensemble_config, is_ensemble
from shared.models.export import FORMATS, export_classifier, load_exported

SIZE = 28
TEMPERATURES = (0.7, 1.0, 2.5)


def members() -> list[torch.nn.Module]:
    """Three differently seeded resnet18s (28 px, 1 channel, the small stem with its max-pool)."""
    models = []
    for seed in range(len(TEMPERATURES)):
        torch.manual_seed(seed)
        models.append(build_classifier("resnet18", in_channels=1, image_size=SIZE, stem_pool=True).eval())
    return models


def mean_calibrated(models: list[torch.nn.Module], x: torch.Tensor) -> np.ndarray:
    """P(pneumonia) each member gives after its own temperature, averaged: what the ensemble must answer."""
    with torch.no_grad():
        per_member = [torch.softmax(m(x) / t, dim=1)[:, 1] for m, t in zip(models, TEMPERATURES, strict=True)]
    return torch.stack(per_member).mean(dim=0).numpy()


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.randn(6, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = classifier_config("resnet18", 1, SIZE, "baseline", "none", stem_pool=True)
    path = tmp_path_factory.mktemp("ensemble") / "baseline_resnet18.pth"
    save_classifier(path, FoldEnsemble(members(), TEMPERATURES), ensemble_config(config, [1, 2, 3], TEMPERATURES))
    return path


def test_the_ensemble_answers_the_mean_of_its_members_calibrated_probabilities(batch: torch.Tensor) -> None:
    models = members()
    expected = mean_calibrated(models, batch)
    single = [torch.softmax(m(batch), dim=1)[:, 1].detach().numpy() for m in models]
    ensemble = FoldEnsemble(members(), TEMPERATURES).eval()
    with torch.no_grad():
        answered = torch.softmax(ensemble(batch), dim=1)[:, 1].numpy()
    np.testing.assert_allclose(answered, expected, atol=1e-6)
    assert not any(np.allclose(answered, p, atol=1e-3) for p in single)  # not any one member's answer


def test_a_saved_ensemble_loads_as_one_classifier_with_every_members_features(
    checkpoint: Path, batch: torch.Tensor
) -> None:
    model, config = load_classifier(checkpoint)
    assert isinstance(model, FoldEnsemble) and len(model.members) == 3 and is_ensemble(config)
    assert config["ensemble"]["folds"] == [1, 2, 3] and config["ensemble"]["temperatures"] == list(TEMPERATURES)
    assert describe_model(config).startswith("fold-ensemble of 3 resnet18 models")
    assert describe_model(classifier_config("resnet18", 1, SIZE, "baseline", "none")) == "one resnet18 model"
    with torch.no_grad():
        logits, features = penultimate_features(model, batch)
    assert features.shape == (6, 3 * 512)  # the members' 512 features side by side, what the gate scores
    np.testing.assert_allclose(torch.softmax(logits, dim=1)[:, 1].numpy(), mean_calibrated(members(), batch), atol=1e-6)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_an_exported_ensemble_computes_what_the_checkpoint_does(
    fmt: str, checkpoint: Path, batch: torch.Tensor, tmp_path: Path
) -> None:
    model, config = load_classifier(checkpoint)
    with torch.no_grad():
        logits, features = penultimate_features(model, batch)
    exported = load_exported(export_classifier(checkpoint, fmt, tmp_path / f"ensemble{FORMATS[fmt]}"))
    assert exported.config == config
    got_logits, got_features = exported.run(batch[:5])  # another batch size than the trace's
    np.testing.assert_allclose(got_logits, logits[:5].numpy(), atol=1e-4)
    np.testing.assert_allclose(got_features, features[:5].numpy(), atol=1e-4)


def test_grad_cam_of_an_ensemble_looks_through_every_member(checkpoint: Path) -> None:
    model, config = load_classifier(checkpoint)
    layers = target_layers(model)
    assert len(layers) == 3 and all(
        layer is member.layer4[-1].conv2 for layer, member in zip(layers, model.members, strict=True)
    )
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (40, 36), dtype=np.uint8)) for _ in range(2)]
    results = gradcam_samples(model, config, images, torch.device("cpu"))
    for pixels, heat, p in results:
        assert pixels.shape == heat.shape == (SIZE, SIZE)
        assert heat.min() >= 0.0 and heat.max() <= 1.0 and heat.max() > 0.0
        assert 0.0 < p < 1.0


def save_gated_ensemble(path: Path, pixels: np.ndarray) -> list[torch.nn.Module]:
    """Save at `path` the fold-ensemble of members() with a calibration (threshold 0.4, the prevalence rule) and a
    plausibility gate fitted on its own features of twenty slightly noisy copies of `pixels` (so `pixels` is in
    distribution and other images are far out of it); return fresh copies of its members, to check it against."""
    config = classifier_config("resnet18", 1, SIZE, "baseline", "none", stem_pool=True)
    ensemble = FoldEnsemble(members(), TEMPERATURES).eval()
    rng = np.random.default_rng(1)
    copies = [
        Image.fromarray(np.clip(pixels + rng.normal(0, 4, pixels.shape), 0, 255).astype(np.uint8)) for _ in range(20)
    ]
    transform = classifier_transform(config, train=False)
    with torch.no_grad():
        features = penultimate_features(ensemble, torch.stack([transform(img) for img in copies]))[1].double().numpy()
    config = ensemble_config(config, [1, 2, 3], TEMPERATURES)
    config["calibration"] = Calibration(1.0, 0.4, "prevalence", None, 0.9, 0.8, 0.1, 0.05, 50).to_dict()
    config["plausibility"] = tight_gate(copies, features)
    save_classifier(path, ensemble, config)
    return members()
