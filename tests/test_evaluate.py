"""`pneumonia evaluate` on a model saved by `pneumonia train-classifier`: each split, and splits never scored."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.cli import main as pneumonia
from shared.datasets.phantom import write_phantom_dataset

NUM_PATIENTS = 80


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A baseline model (one split, one epoch) on an 80-patient 16 px phantom, and its final metrics."""
    root = tmp_path_factory.mktemp("evaluate")
    data = write_phantom_dataset(root / "phantom", num_patients=NUM_PATIENTS, image_size=16, seed=2)
    argv = [
        "train-classifier", "--dataset", "phantom", "--data-dir", str(data), "--model-dir", str(root / "models"),
        "--results-dir", str(root / "metrics"), "--figures-dir", str(root / "figures"), "--arch", "resnet18",
        "--weights", "none", "--unfreeze", "--image-size", "16", "--channels", "1", "--epochs", "1",
        "--batch-size", "20", "--k-folds", "1", "--workers", "0", "--cpu",
    ]  # fmt: skip
    assert pneumonia(argv) == 0
    final = json.loads((root / "metrics" / "baseline_final_metrics.json").read_text())
    return {"root": root, "data": data, "model": final["model"], "final": final}


def evaluate(trained: dict, *flags: str) -> int:
    return pneumonia(["evaluate", "--model", trained["model"], "--batch-size", "20", "--cpu", *flags])


def test_holdout_matches_what_training_reported(trained: dict, capsys: pytest.CaptureFixture[str]) -> None:
    output = trained["root"] / "eval_holdout.json"
    flags = ["--dataset", "phantom", "--data-dir", str(trained["data"]), "--split", "holdout", "--output", str(output)]
    assert evaluate(trained, *flags) == 0
    result = json.loads(output.read_text())
    # By default: the model's calibrated operating point, as training reported it on the hold-out.
    expected = trained["final"]["holdout_operating_point"]
    assert result["split"] == "holdout" and result["config"]["arch"] == "resnet18" and result["calibrated"]
    assert result["metrics"]["threshold"] == pytest.approx(trained["final"]["calibration"]["threshold"])
    assert result["metrics"]["confusion_matrix"] == expected["confusion_matrix"]
    assert result["metrics"]["n"] == trained["final"]["n_holdout"]
    assert result["metrics"]["auroc"] == pytest.approx(expected["auroc"], abs=1e-6)
    assert result["ece"] == pytest.approx(expected["ece_calibrated"], abs=1e-9)
    assert f"{expected['accuracy']:.4f}" in capsys.readouterr().out
    # --uncalibrated: plain softmax at 0.5, the training's plain hold-out metrics.
    assert evaluate(trained, *flags, "--uncalibrated") == 0
    plain = json.loads(output.read_text())
    assert not plain["calibrated"] and plain["metrics"]["threshold"] == 0.5
    assert plain["metrics"]["confusion_matrix"] == trained["final"]["holdout"]["confusion_matrix"]


def test_all_scores_every_labelled_image(trained: dict) -> None:
    output = trained["root"] / "eval_all.json"
    flags = ["--dataset", "phantom", "--data-dir", str(trained["data"]), "--split", "all", "--output", str(output)]
    assert evaluate(trained, *flags) == 0
    assert json.loads(output.read_text())["metrics"]["n"] == NUM_PATIENTS


def test_unlabelled_test_split_is_never_scored(trained: dict, capsys: pytest.CaptureFixture[str]) -> None:
    # The phantom (RSNA layout) has test images, but no ground truth for them.
    assert evaluate(trained, "--dataset", "phantom", "--data-dir", str(trained["data"]), "--split", "test") == 2
    assert "no labelled official test split" in capsys.readouterr().err


def test_official_test_split_of_pneumoniamnist(trained: dict, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    test_labels = np.array([[0], [1]] * 5, dtype=np.uint8)
    np.savez(
        tmp_path / "pneumoniamnist.npz",
        train_images=rng.integers(0, 256, (12, 16, 16), dtype=np.uint8),
        train_labels=np.array([[0], [1]] * 6, dtype=np.uint8),
        test_images=rng.integers(0, 256, (10, 16, 16), dtype=np.uint8),
        test_labels=test_labels,
    )
    output = tmp_path / "metrics.json"
    flags = ["--dataset", "pneumoniamnist", "--data-dir", str(tmp_path), "--output", str(output)]
    assert evaluate(trained, *flags, "--split", "test") == 0
    metrics = json.loads(output.read_text())["metrics"]
    assert (metrics["n"], metrics["n_positive"]) == (10, int(test_labels.sum()))
    assert evaluate(trained, *flags, "--split", "all") == 0
    assert json.loads(output.read_text())["metrics"]["n"] == 22


def test_npz_with_only_a_test_split(trained: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """MedMNIST users often have just the test split: it is scored; what needs development images says so."""
    rng = np.random.default_rng(1)
    test_labels = np.array([[1], [0], [1]] * 4, dtype=np.uint8)
    np.savez(
        tmp_path / "pneumoniamnist.npz",
        test_images=rng.integers(0, 256, (12, 16, 16), dtype=np.uint8),
        test_labels=test_labels,
    )
    output = tmp_path / "metrics.json"
    flags = ["--dataset", "pneumoniamnist", "--data-dir", str(tmp_path), "--output", str(output)]
    assert evaluate(trained, *flags, "--split", "test") == 0
    result = json.loads(output.read_text())
    assert (result["metrics"]["n"], result["metrics"]["n_positive"]) == (12, int(test_labels.sum()))
    assert result["metrics"]["threshold"] == pytest.approx(trained["final"]["calibration"]["threshold"])
    assert "(test, 12 images" in capsys.readouterr().out
    assert evaluate(trained, *flags, "--split", "all") == 0
    assert json.loads(output.read_text())["metrics"]["n"] == 12
    assert evaluate(trained, *flags, "--split", "holdout") == 2
    assert "no labelled development images (only a test split of 12 images)" in capsys.readouterr().err

    np.savez(tmp_path / "pneumoniamnist.npz", images=rng.integers(0, 256, (4, 16, 16), dtype=np.uint8))
    assert evaluate(trained, *flags, "--split", "test") == 2
    assert "holds no labelled split (train_images or val_images or test_images)" in capsys.readouterr().err


def test_missing_model_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "none.pth"
    assert pneumonia(["evaluate", "--model", str(missing), "--dataset", "phantom", "--data-dir", str(tmp_path)]) == 2
    assert f"checkpoint not found: {missing}" in capsys.readouterr().err
