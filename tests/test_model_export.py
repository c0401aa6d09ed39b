"""`pneumonia export`: TorchScript and ONNX artifacts compute the eager model's logits and carry its config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.cli import main as pneumonia
from shared.datasets import load_dataset
from shared.errors import CheckpointError
from shared.models.classifier import (
    build_classifier,
    classifier_config,
    classifier_transform,
    load_classifier,
    penultimate_features,
    save_classifier,
)
from shared.models.export import FORMATS, export_classifier, load_exported


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A resnet18 (28 px, 1 channel) with random weights and a non-trivial config entry to carry along."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("export") / "baseline_resnet18.pth"
    config = classifier_config("resnet18", 1, 28, "baseline", "none")
    config["note"] = "carried through the export"
    save_classifier(path, build_classifier("resnet18", in_channels=1, image_size=28), config)
    return path


@pytest.fixture(scope="module")
def phantom_batch(phantom_dir: Path, checkpoint: Path) -> torch.Tensor:
    """Nine phantom radiographs preprocessed exactly as evaluation does."""
    _, config = load_classifier(checkpoint)
    transform = classifier_transform(config, train=False)
    images = load_dataset("phantom", phantom_dir).labelled
    return torch.stack([transform(images.load(i)) for i in range(9)])


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_export_matches_the_eager_model_and_carries_the_config(
    fmt: str, checkpoint: Path, phantom_batch: torch.Tensor, tmp_path: Path
) -> None:
    path = export_classifier(checkpoint, fmt, tmp_path / f"model{FORMATS[fmt]}")
    assert path.is_file() and not list(tmp_path.glob(".*.tmp"))
    model, config = load_classifier(checkpoint)
    exported = load_exported(path)
    assert exported.config == config and exported.config["note"] == "carried through the export"
    with torch.no_grad():
        eager_logits, eager_features = (out.numpy() for out in penultimate_features(model, phantom_batch))
    for batch in (phantom_batch, phantom_batch[:1]):  # the batch dimension is dynamic
        logits, features = exported.run(batch)
        assert logits.shape == (len(batch), 2) and features.shape == (len(batch), 512)
        np.testing.assert_allclose(logits, eager_logits[: len(batch)], atol=1e-5, rtol=0)
        np.testing.assert_allclose(features, eager_features[: len(batch)], atol=1e-5, rtol=0)


def test_cli_writes_the_artifact_next_to_the_model(checkpoint: Path) -> None:
    assert pneumonia(["export", "--model", str(checkpoint), "--format", "torchscript"]) == 0
    assert checkpoint.with_suffix(".torchscript").is_file()


def test_unknown_or_foreign_artifacts_are_refused(tmp_path: Path, checkpoint: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_exported(tmp_path / "missing.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match="not an ONNX model"):
        load_exported(garbage)
    foreign = tmp_path / "foreign.torchscript"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(foreign))
    with pytest.raises(CheckpointError, match="carries no config.json"):
        load_exported(foreign)
    with pytest.raises(CheckpointError, match="unknown artifact type"):
        load_exported(checkpoint)
    with pytest.raises(ValueError, match="unknown export format"):
        export_classifier(checkpoint, "tflite")
