"""The operating point of train-classifier: one decision threshold chosen on the pooled out-of-fold validation
predictions of all fold models (each after its own temperature), stored in every fold checkpoint and in the served
model; the hold-out is only scored, at 0.5 and at that threshold."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from training_helpers import FAST, MAX_IMAGES, classifier_options, output_args

from pipeline.cli import main as pneumonia
from services.trainer.classification.data import fold_indices, subsample
from services.trainer.classification.operating_point import operating_calibrations
from services.trainer.classification.results import format_summary
from services.trainer.classification.state import TRAINED_SHA256, TRAINING_STATE, training_state_path
from services.trainer.train_classifier import train_strategy
from shared.calibration import Calibration, calibrated_probability, choose_threshold, fit_calibration
from shared.checkpoints import load_checkpoint
from shared.configs import ClassifierTrainingConfig
from shared.datasets import TorchImageDataset, load_dataset
from shared.datasets.phantom import write_phantom_dataset
from shared.errors import CheckpointError
from shared.models.classifier import classifier_transform, load_classifier
from shared.operating_rule import OperatingRule
from shared.serving.archive import build_model_archive
from shared.splits import develop_and_holdout
from shared.training.loop import predict_logits

K = 2


def options(data: Path, root: Path, *extra: str) -> ClassifierTrainingConfig:
    argv = ["train-classifier", "--data-dir", str(data), *output_args(root), *FAST, "--k-folds", str(K)]
    return classifier_options([*argv, "--epochs", "1", "--operating-rule", "youden", *extra])


def fold_model(root: Path, fold: int) -> Path:
    return root / "models" / f"fold_{fold}_baseline_resnet18.pth"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("phantom16"), num_patients=80, image_size=16, seed=1)


@pytest.fixture(scope="module")
def run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A two-fold baseline, one epoch, through the command line (its printed summary kept), under Youden's J: the
    rule whose pooled threshold depends on the validation images (the default prevalence rule reads only their
    prevalence)."""
    root = tmp_path_factory.mktemp("pooled")
    argv = ["train-classifier", "--data-dir", str(data), *output_args(root), *FAST, "--k-folds", str(K)]
    assert pneumonia([*argv, "--epochs", "1", "--operating-rule", "youden"]) == 0
    return root, json.loads((root / "metrics" / "baseline_final_metrics.json").read_text())


def stored_records(root: Path, fold: int | None = None) -> list[dict]:
    return load_checkpoint(training_state_path(root / "models", "baseline", "resnet18", fold), TRAINING_STATE)[
        "folds_done"
    ]


def test_pooled_threshold_is_chosen_on_the_out_of_fold_predictions_only(run: tuple[Path, dict], data: Path) -> None:
    root, final = run
    threshold = final["operating_point"]["threshold"]
    # Recomputed here from scratch: every development image scored by the fold model that did not train on it,
    # after that model's temperature, concatenated, then Youden's J.
    develop, holdout = develop_and_holdout(load_dataset("phantom", data))
    develop = subsample(develop, MAX_IMAGES, seed=0)
    probabilities, labels, scored = [], [], []
    for fold, (_, val_idx) in enumerate(fold_indices(develop, K, 0.15, seed=0), start=1):
        model, config = load_classifier(fold_model(root, fold))
        val = develop.subset(val_idx)
        loader = DataLoader(TorchImageDataset(val, classifier_transform(config, train=False)), batch_size=64)
        y, logits, _ = predict_logits(model, loader, torch.device("cpu"))
        calibration = Calibration.from_dict(config["calibration"])
        # The temperature is the fold's own, fitted on its validation fold alone.
        assert calibration.temperature == pytest.approx(fit_calibration(logits, y).temperature, rel=1e-6)
        probabilities.append(calibrated_probability(logits, calibration))
        labels.append(y)
        scored += list(val.patient_ids)
    expected = choose_threshold(np.concatenate(probabilities), np.concatenate(labels))
    assert threshold == pytest.approx(expected[0], abs=1e-9)
    assert (final["operating_point"]["pooled_sensitivity"], final["operating_point"]["pooled_specificity"]) == (
        pytest.approx(expected[1]),
        pytest.approx(expected[2]),
    )
    assert final["operating_point"]["n_pooled"] == len(develop)

    # What the run stored and pooled: each development image once, out of fold; no hold-out image.
    records = stored_records(root)
    pooled_ids = [pid for r in records for pid in r["validation_predictions"]["patient_ids"]]
    assert sorted(pooled_ids) == sorted(scored) == sorted(develop.patient_ids)
    assert not set(pooled_ids) & set(holdout.patient_ids)
    stored = [np.asarray(r["validation_predictions"]["calibrated"]) for r in records]
    stored_labels = [np.asarray(r["validation_predictions"]["labels"]) for r in records]
    assert threshold == choose_threshold(np.concatenate(stored), np.concatenate(stored_labels))[0]
    # Each fold's own threshold is reported beside it (in this run they differ: pooling changed something).
    own = [f["fold_threshold"] for f in final["operating_point"]["per_fold"]]
    assert own == [r["calibration"]["threshold"] for r in records]
    assert any(t != threshold for t in own)


def test_the_pooled_threshold_is_in_every_fold_checkpoint_and_the_served_archive(
    run: tuple[Path, dict], tmp_path: Path
) -> None:
    root, final = run
    threshold = final["operating_point"]["threshold"]
    records = stored_records(root)
    for fold in range(1, K + 1):
        _, config = load_classifier(fold_model(root, fold))
        calibration = config["calibration"]
        assert (calibration["threshold"], calibration["threshold_rule"]) == (threshold, "pooled")
        assert calibration["temperature"] == records[fold - 1]["calibration"]["temperature"]
        assert calibration["n_threshold"] == final["n_develop"] and calibration["n_val"] < final["n_develop"]
    served = Path(final["model"])
    config = load_classifier(served)[1]  # the fold-ensemble: the same threshold, its members' temperatures inside
    assert final["calibration"] == config["calibration"] and config["calibration"]["threshold"] == threshold
    assert config["ensemble"]["temperatures"] == [r["calibration"]["temperature"] for r in records]

    archive = build_model_archive(served, tmp_path, "pneumonia")
    with zipfile.ZipFile(archive) as mar:
        checkpoint = torch.load(io.BytesIO(mar.read(served.name)), map_location="cpu", weights_only=False)
    assert checkpoint["config"]["calibration"]["threshold"] == threshold


def test_holdout_is_reported_at_half_and_at_the_pooled_threshold(run: tuple[Path, dict]) -> None:
    root, final = run
    threshold = final["operating_point"]["threshold"]
    assert [m["threshold"] for m in final["holdout_operating_point_per_fold"]] == [threshold] * K
    assert [m["threshold"] for m in final["holdout_per_fold"]] == [0.5] * K
    served = final["operating_point"]["served"]
    assert served["threshold"] == threshold
    for name in ("accuracy", "sensitivity", "specificity"):
        assert served["holdout_at_0.5"][name] == final["holdout"][name]
        assert served["holdout_at_threshold"][name] == final["holdout_operating_point"][name]
    per_fold = final["operating_point"]["per_fold"]
    for fold, at_half, operating in zip(
        per_fold, final["holdout_per_fold"], final["holdout_operating_point_per_fold"], strict=True
    ):
        assert fold["holdout_at_0.5"]["accuracy"] == at_half["accuracy"]
        assert fold["holdout_at_threshold"]["accuracy"] == operating["accuracy"]
    summary = format_summary(final)
    for fold in range(1, K + 1):
        assert f"fold {fold} @ 0.500" in summary and f"fold {fold} @ {threshold:.3f}" in summary
    assert "ensemble @ 0.500" in summary and f"ensemble @ {threshold:.3f}" in summary
    assert f"chosen on {final['n_develop']} pooled out-of-fold validation predictions" in summary


def test_per_fold_rule_on_resume_and_back(run: tuple[Path, dict], data: Path) -> None:
    """--operating-point per-fold keeps each fold's own threshold; a finished run resumes under either rule (the
    rewritten fold checkpoints are recognised) without retraining, and pooled again gives the same results."""
    root, final = run
    events: list[dict] = []
    per_fold = train_strategy(options(data, root, "--resume", "--operating-point", "per-fold"), events.append)
    assert events == []
    own = [r["calibration"]["threshold"] for r in stored_records(root)]
    assert [m["threshold"] for m in per_fold["holdout_operating_point_per_fold"]] == own
    assert per_fold["operating_point"]["rule"] == "per-fold" and per_fold["operating_point"]["threshold"] is None
    assert [load_classifier(fold_model(root, f))[1]["calibration"]["threshold"] for f in (1, 2)] == own
    assert per_fold["holdout_per_fold"] == final["holdout_per_fold"]

    assert train_strategy(options(data, root, "--resume"), events.append) is not None
    assert events == []
    assert json.loads((root / "metrics" / "baseline_final_metrics.json").read_text()) == final


def test_a_replaced_fold_model_is_still_detected_after_the_results(run: tuple[Path, dict], data: Path) -> None:
    root, _ = run
    path = fold_model(root, 1)
    original = path.read_bytes()
    torch.save({"kind": "classifier", "config": {}, "state_dict": {}}, path)
    try:
        with pytest.raises(CheckpointError, match="fold 1's model .* is missing or was replaced"):
            train_strategy(options(data, root, "--resume"))
    finally:
        path.write_bytes(original)


def test_folds_run_as_separate_jobs_pool_when_the_last_one_finishes(
    run: tuple[Path, dict], data: Path, tmp_path: Path
) -> None:
    straight_root, straight = run
    assert train_strategy(options(data, tmp_path, "--fold-index", "1")) is None
    # The fold finished first carries its own threshold until the last fold pools.
    assert stored_records(tmp_path, 2)[0]["validation_predictions"]["labels"]
    before = load_checkpoint(fold_model(tmp_path, 2), "classifier")
    assert before["config"]["calibration"]["threshold_rule"] == "per-fold"
    final = train_strategy(options(data, tmp_path, "--fold-index", "0"))
    after = load_checkpoint(fold_model(tmp_path, 2), "classifier")  # only the calibration changed
    assert after["config"]["calibration"]["threshold_rule"] == "pooled"
    assert after["config"] == {
        **before["config"],
        "calibration": after["config"]["calibration"],
        TRAINED_SHA256: stored_records(tmp_path, 2)[0]["model_sha256"],
    }
    assert all(torch.equal(t, after["state_dict"][k]) for k, t in before["state_dict"].items())
    for key in ("operating_point", "calibration", "holdout_operating_point_per_fold", "holdout_per_fold"):
        assert final[key] == straight[key], key
    for fold in (1, 2):
        calibration = load_classifier(fold_model(tmp_path, fold))[1]["calibration"]
        assert calibration == load_classifier(fold_model(straight_root, fold))[1]["calibration"]
        assert calibration["threshold"] == straight["operating_point"]["threshold"]
    # A restarted job of an already finished fold finds every fold done and writes the same results again.
    assert train_strategy(options(data, tmp_path, "--fold-index", "1", "--resume")) == final


def test_pooling_never_reads_holdout_predictions() -> None:
    """operating_calibrations on hand-made records: the pooled threshold is that of the concatenated validation
    predictions, whatever the hold-out predictions say; each temperature is kept."""
    rng = np.random.default_rng(0)
    records = []
    for fold in (1, 2, 3):
        labels = rng.integers(0, 2, 30)
        p = np.clip(0.35 * labels + rng.uniform(0, 0.65, 30), 0, 1)
        calibration = Calibration(1.0 + fold, 0.5, "youden", None, 0.8, 0.8, 0.1, 0.05, 30, "per-fold", 30, 0.5)
        holdout = {"labels": [0, 1], "uncalibrated": [0.9, 0.1], "calibrated": [0.9, 0.1]}
        records.append(
            {
                "fold": fold,
                "calibration": calibration.to_dict(),
                "validation_predictions": {"labels": labels.tolist(), "calibrated": p.tolist()},
                "holdout_probabilities": holdout,
            }
        )
    pooled = operating_calibrations(records, "pooled")
    all_p = np.concatenate([r["validation_predictions"]["calibrated"] for r in records])
    all_y = np.concatenate([r["validation_predictions"]["labels"] for r in records])
    assert {c.threshold for c in pooled} == {choose_threshold(all_p, all_y)[0]}
    assert [c.temperature for c in pooled] == [2.0, 3.0, 4.0]
    assert all(c.n_threshold == 90 and c.fold_threshold == 0.5 for c in pooled)
    for record in records:
        record["holdout_probabilities"] = {"labels": [1, 0], "uncalibrated": [0.2, 0.7], "calibrated": [0.2, 0.7]}
    assert operating_calibrations(records, "pooled") == pooled
    # A target sensitivity: the highest pooled threshold reaching it.
    for record in records:
        record["calibration"]["method"], record["calibration"]["target_sensitivity"] = "target-sensitivity", 0.95
    targeted = operating_calibrations(records, "pooled")
    assert targeted[0].threshold == choose_threshold(all_p, all_y, OperatingRule.parse("sensitivity:0.95"))[0]
    assert targeted[0].val_sensitivity >= 0.95
    assert operating_calibrations(records, "per-fold")[0].threshold == 0.5
    del records[1]["validation_predictions"]
    with pytest.raises(CheckpointError, match=r"fold\(s\) \[2\] .* --operating-point per-fold"):
        operating_calibrations(records, "pooled")
