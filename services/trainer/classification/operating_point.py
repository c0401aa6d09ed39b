"""The fold models' operating point: calibration and plausibility gate fitted on their folds, the decision threshold
chosen per fold or on the pooled out-of-fold validation predictions, and the hold-out evaluation at 0.5 and at it.

Pooled (the default rule): every fold model's temperature is fitted on its own validation fold; then one threshold
(by --operating-rule: the prevalence rule, a target sensitivity or Youden's J) is chosen on the validation predictions
of all fold models
together, each image scored by the fold model that did not train on it after that model's temperature. That one
threshold goes into every fold checkpoint and so into the served model. The hold-out is only scored, never fitted on.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from services.trainer.classification.data import (
    evaluation_loader,
)
from services.trainer.classification.state import TRAINED_SHA256, fold_model_path
from shared.calibration import (
    Calibration,
    CalibrationError,
    calibrated_probability,
    expected_calibration_error,
    fit_calibration,
    pneumonia_probability,
    pooled_calibration,
)
from shared.configs import ClassifierTrainingConfig
from shared.datasets import LabelledImages
from shared.errors import CheckpointError, DatasetError
from shared.metrics import binary_metrics
from shared.models.classifier import (
    classifier_transform,
    update_classifier_config,
)
from shared.plausibility import fit_gate
from shared.training.loop import predict_logits

log = logging.getLogger(__name__)


def fit_fold_operating_point(
    model: nn.Module,
    train_real: LabelledImages,
    val: LabelledImages,
    config: dict[str, Any],
    options: ClassifierTrainingConfig,
    device: torch.device,
) -> tuple[dict[str, Any], dict[str, list]]:
    """(the fold model's config plus its calibration (temperature and threshold, fitted on the validation fold) and
    plausibility gate (fitted on the real training fold, its feature threshold on the validation fold), its
    out-of-fold predictions {"patient_ids", "labels", "calibrated"} on the validation fold). Hold-out and synthetic
    images are never used here."""
    eval_transform = classifier_transform(config, train=False)
    y_val, val_logits, _ = predict_logits(model, evaluation_loader(val, eval_transform, options), device)
    try:
        calibration = fit_calibration(val_logits, y_val, options.rule(), model_prior(options))
    except CalibrationError as exc:
        raise DatasetError(f"cannot calibrate on this validation fold: {exc}") from exc
    gate = fit_gate(model, eval_transform, train_real, val, device, seed=options.seed)
    log.info(
        "calibration: temperature %.3f, threshold %.3f (%s; validation sensitivity %.3f, specificity %.3f), "
        "ECE %.3f -> %.3f",
        calibration.temperature,
        calibration.threshold,
        calibration.method,
        calibration.val_sensitivity,
        calibration.val_specificity,
        calibration.ece_before,
        calibration.ece_after,
    )
    predictions = {
        "patient_ids": [str(pid) for pid in val.patient_ids],
        "labels": [int(label) for label in y_val],
        "calibrated": calibrated_probability(val_logits, calibration).tolist(),
    }
    return {**config, "calibration": calibration.to_dict(), "plausibility": gate.to_dict()}, predictions


def model_prior(options: ClassifierTrainingConfig) -> float | None:
    """The class prior a model's scores stand at: 0.5 where the training balanced the classes (weighted loss or
    sampler), else None (the data's own)."""
    return 0.5 if options.class_balance in ("weighted-loss", "sampler") else None


def operating_metrics(labels: Any, plain: Any, calibrated: Any, threshold: float) -> dict[str, Any]:
    """Metrics of the calibrated probabilities at `threshold`, with the ECE before and after calibration."""
    operating = binary_metrics(labels, calibrated, threshold)
    operating["ece_uncalibrated"] = expected_calibration_error(np.asarray(plain), np.asarray(labels))
    operating["ece_calibrated"] = expected_calibration_error(np.asarray(calibrated), np.asarray(labels))
    return operating


def holdout_evaluation(
    model: nn.Module, loader: DataLoader, device: torch.device, calibration: Calibration
) -> tuple[dict[str, Any], dict[str, Any], dict[str, list[float]]]:
    """Hold-out metrics at 0.5 on plain softmax, at the calibrated operating point (with ECE before and after
    calibration), and both probability lists (for the reliability diagram)."""
    y_true, logits, _ = predict_logits(model, loader, device)
    plain = pneumonia_probability(logits)
    calibrated = calibrated_probability(logits, calibration)
    at_half = binary_metrics(y_true, plain)
    operating = operating_metrics(y_true, plain, calibrated, calibration.threshold)
    return (
        at_half,
        operating,
        {"labels": y_true.tolist(), "uncalibrated": plain.tolist(), "calibrated": calibrated.tolist()},
    )


def pooled_validation_predictions(records: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """(calibrated P(pneumonia), labels) of every fold's out-of-fold validation predictions, in fold order."""
    missing = [record["fold"] for record in records if "validation_predictions" not in record]
    if missing:
        raise CheckpointError(
            f"fold(s) {missing} were saved without their validation predictions (an older version): a pooled "
            "threshold needs them; retrain those folds or pass --operating-point per-fold"
        )
    predictions = [record["validation_predictions"] for record in records]
    return (
        np.concatenate([np.asarray(p["calibrated"], dtype=np.float64) for p in predictions]),
        np.concatenate([np.asarray(p["labels"], dtype=np.int64) for p in predictions]),
    )


def operating_calibrations(records: list[dict[str, Any]], rule: str) -> list[Calibration]:
    """Each fold model's calibration under `rule`: its own ("per-fold"), or its temperature with the threshold chosen
    on the pooled validation predictions of all folds ("pooled"). Only validation predictions are used."""
    own = [Calibration.from_dict(record["calibration"]) for record in records]
    if rule == "per-fold":
        return own
    if rule != "pooled":
        raise ValueError(f"unknown operating point rule {rule!r}")
    probabilities, labels = pooled_validation_predictions(records)
    try:
        return [pooled_calibration(calibration, probabilities, labels) for calibration in own]
    except CalibrationError as exc:
        raise DatasetError(f"cannot choose a pooled threshold: {exc}") from exc


def apply_operating_point(
    records: list[dict[str, Any]], rule: str, model_dir: Path, strategy: str, arch: str
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Give every finished fold its operating point under `rule`: write its calibration into its checkpoint (weights
    unchanged, TRAINED_SHA256 naming the checkpoint training wrote) and score its hold-out probabilities at the new
    threshold. Returns (the records with "calibration" and "holdout_operating_point" replaced, a summary: the rule,
    the threshold, what it was chosen on, each fold's own threshold and hold-out accuracy / sensitivity /
    specificity at 0.5 and at the threshold). The stored records (the training state) keep their per-fold values, so
    a resumed or last-finishing run derives the same operating point again."""
    calibrations = operating_calibrations(records, rule)
    updated, per_fold = [], []
    for record, calibration in zip(records, calibrations, strict=True):
        path = fold_model_path(model_dir, record["fold"], strategy, arch)
        update_classifier_config(path, {"calibration": calibration.to_dict(), TRAINED_SHA256: record["model_sha256"]})
        p = record["holdout_probabilities"]
        operating = operating_metrics(p["labels"], p["uncalibrated"], p["calibrated"], calibration.threshold)
        updated.append({**record, "calibration": calibration.to_dict(), "holdout_operating_point": operating})
        per_fold.append(
            {
                "fold": record["fold"],
                "threshold": calibration.threshold,
                "fold_threshold": calibration.fold_threshold,
                "holdout_at_0.5": decision_metrics(record["holdout_metrics"]),
                "holdout_at_threshold": decision_metrics(operating),
            }
        )
    first = calibrations[0]
    summary = {
        "rule": rule,
        "method": first.method,
        "target_sensitivity": first.target_sensitivity,
        "operating_rule": str(first.rule),
        "description": first.describe(),
        "threshold": first.threshold if rule == "pooled" else None,  # per-fold: each fold's own
        "n_pooled": first.n_threshold if rule == "pooled" else None,
        "pooled_sensitivity": first.val_sensitivity if rule == "pooled" else None,
        "pooled_specificity": first.val_specificity if rule == "pooled" else None,
        "per_fold": per_fold,
    }
    if rule == "pooled":
        log.info(
            "operating point: threshold %.3f (%s) on %d pooled out-of-fold validation predictions of %d fold(s) "
            "(sensitivity %.3f, specificity %.3f); the folds alone gave %s",
            first.threshold,
            first.method,
            first.n_threshold,
            len(records),
            first.val_sensitivity,
            first.val_specificity,
            ", ".join(f"{c.fold_threshold:.3f}" for c in calibrations),
        )
    return updated, summary


def decision_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The threshold and the accuracy, sensitivity and specificity at it, of a binary_metrics result."""
    return {name: metrics[name] for name in ("threshold", "accuracy", "sensitivity", "specificity")}
