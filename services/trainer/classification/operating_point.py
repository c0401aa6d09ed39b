"""A fold model's operating point: calibration and plausibility gate fitted on its folds, hold-out evaluation."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from services.trainer.classification.data import (
    evaluation_loader,
)
from shared.calibration import (
    Calibration,
    CalibrationError,
    calibrated_probability,
    expected_calibration_error,
    fit_calibration,
    pneumonia_probability,
)
from shared.configs import ClassifierTrainingConfig
from shared.datasets import LabelledImages
from shared.errors import DatasetError
from shared.metrics import binary_metrics
from shared.models.classifier import (
    classifier_transform,
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
) -> dict[str, Any]:
    """The fold model's config plus its calibration (temperature and threshold, fitted on the validation fold) and
    plausibility gate (fitted on the real training fold, its feature threshold on the validation fold). Hold-out and
    synthetic images are never used here."""
    eval_transform = classifier_transform(config, train=False)
    y_val, val_logits, _ = predict_logits(model, evaluation_loader(val, eval_transform, options), device)
    try:
        calibration = fit_calibration(val_logits, y_val, options.target_sensitivity)
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
    return {**config, "calibration": calibration.to_dict(), "plausibility": gate.to_dict()}


def holdout_evaluation(
    model: nn.Module, loader: DataLoader, device: torch.device, calibration: Calibration
) -> tuple[dict[str, Any], dict[str, Any], dict[str, list[float]]]:
    """Hold-out metrics at 0.5 on plain softmax, at the calibrated operating point (with ECE before and after
    calibration), and both probability lists (for the reliability diagram)."""
    y_true, logits, _ = predict_logits(model, loader, device)
    plain = pneumonia_probability(logits)
    calibrated = calibrated_probability(logits, calibration)
    at_half = binary_metrics(y_true, plain)
    operating = binary_metrics(y_true, calibrated, calibration.threshold)
    operating["ece_uncalibrated"] = expected_calibration_error(plain, y_true)
    operating["ece_calibrated"] = expected_calibration_error(calibrated, y_true)
    return (
        at_half,
        operating,
        {"labels": y_true.tolist(), "uncalibrated": plain.tolist(), "calibrated": calibrated.tolist()},
    )
