"""A fold model under shift: its predictions and its plausibility gate's verdicts on MedMNIST-C's corruptions of the
hold-out (shared.corruptions), every corruption of the dataset at each --shift-severities.

The hold-out is carved from the same pool the models learn from, so it overstates what a user gets. The shifted
copies are reproducible (seeded per image) stand-ins for the acquisition and processing differences a deployed model
meets: scored, never fitted on. Every image stays a real radiograph with its label, so a refusal by the gate there is
a false refusal.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import nn

from shared.calibration import Calibration, calibrated_probability, pneumonia_probability
from shared.corruptions import CORRUPTIONS, CorruptedImages, shift_name
from shared.datasets import ArrayImages, LabelledImages
from shared.metrics import COMMON_SENSITIVITY, binary_metrics, specificity_at_sensitivity
from shared.models.classifier import classifier_transform, penultimate_features
from shared.plausibility import ImplausibleImageError, PlausibilityGate, check_image

log = logging.getLogger(__name__)

BATCH_SIZE = 256
MAX_HELD_BYTES = 256 * 2**20  # shifted copies of the hold-out held in memory up to this (shifted_holdouts)


def gated_predictions(
    model: nn.Module,
    images: LabelledImages,
    config: dict[str, Any],
    calibration: Calibration,
    gate: PlausibilityGate,
    device: torch.device,
) -> dict[str, list]:
    """{"uncalibrated", "calibrated": P(pneumonia) per image, "refused": 1 where the gate (the served handler's image
    and feature checks) refuses it}, in the order of `images`, from one forward pass per batch."""
    transform = classifier_transform(config, train=False)
    plain, calibrated, refused = [], [], []
    model.eval()
    with torch.no_grad():
        for first in range(0, len(images), BATCH_SIZE):
            batch = [images.load(i) for i in range(first, min(first + BATCH_SIZE, len(images)))]
            image_refused = []
            for img in batch:
                try:
                    check_image(img, gate)
                    image_refused.append(False)
                except ImplausibleImageError:
                    image_refused.append(True)
            logits, features = penultimate_features(model, torch.stack([transform(img) for img in batch]).to(device))
            logits_np = logits.double().cpu().numpy()
            feature_scores = gate.features.score(features.double().cpu().numpy())
            plain += pneumonia_probability(logits_np).tolist()
            calibrated += calibrated_probability(logits_np, calibration).tolist()
            far = feature_scores > gate.max_feature_score
            refused += [int(by_image or by_features) for by_image, by_features in zip(image_refused, far, strict=True)]
    return {"uncalibrated": plain, "calibrated": calibrated, "refused": refused}


def shift_metrics(labels: Any, probabilities: dict[str, list], threshold: float) -> dict[str, Any]:
    """One fold model on one set: AUROC, accuracy, sensitivity and specificity at its threshold and at 0.5, the
    specificity at the common sensitivity, and the share of images its gate refused."""
    at_threshold = binary_metrics(labels, probabilities["calibrated"], threshold)
    at_half = binary_metrics(labels, probabilities["uncalibrated"])
    metrics = {name: at_threshold[name] for name in ("auroc", "accuracy", "sensitivity", "specificity")}
    metrics |= {f"{name}_at_0.5": at_half[name] for name in ("accuracy", "sensitivity", "specificity")}
    metrics["specificity_at_sensitivity_0.95"] = specificity_at_sensitivity(
        labels, probabilities["calibrated"], COMMON_SENSITIVITY
    )
    if "refused" in probabilities:
        metrics["refused"] = float(np.mean(probabilities["refused"]))
    return metrics


def fold_shift_scores(record: dict[str, Any]) -> dict[str, Any]:
    """One fold model's shift_metrics at its threshold: {"holdout": the clean hold-out, "shifts": {shift: ...}}."""
    threshold = record["calibration"]["threshold"]
    labels = record["holdout_probabilities"]["labels"]
    return {
        "holdout": shift_metrics(
            labels, {**record["holdout_probabilities"], "refused": record["holdout_refused"]}, threshold
        ),
        "shifts": {
            shift: shift_metrics(labels, probabilities, threshold)
            for shift, probabilities in record["shifted_probabilities"].items()
        },
    }


def shifted_holdouts(holdout: LabelledImages, severities: tuple[int, ...], seed: int) -> dict[str, LabelledImages]:
    """Shift name ('<corruption>@<severity>') -> that corrupted copy of the hold-out, every corruption of the dataset
    at each severity. Corrupted once and held in memory when the images share one size and all copies fit in
    MAX_HELD_BYTES (PneumoniaMNIST's 13 copies of 1,047 images: 11 MB), so that every model scored on them (each fold
    model, the fold-ensemble) reuses the same images; otherwise corrupted again as each model loads them."""
    sets: dict[str, LabelledImages] = {
        shift_name(corruption, severity): CorruptedImages(holdout, corruption, severity, seed=seed)
        for severity in severities
        for corruption in CORRUPTIONS
    }
    if not sets or not len(holdout):
        return sets
    shape = np.asarray(holdout.load(0).convert("L")).shape
    if len(sets) * len(holdout) * int(np.prod(shape)) > MAX_HELD_BYTES:
        return sets
    held: dict[str, LabelledImages] = {}
    for name, images in sets.items():
        pixels = [np.asarray(images.load(i)) for i in range(len(images))]
        if any(p.shape != shape for p in pixels):
            return sets
        held[name] = ArrayImages(np.stack(pixels), images.patient_ids, images.labels)
    return held


def shifted_holdout_predictions(
    model: nn.Module,
    shifted: dict[str, LabelledImages],
    config: dict[str, Any],
    calibration: Calibration,
    gate: PlausibilityGate,
    device: torch.device,
) -> dict[str, dict[str, list]]:
    """Shift name -> gated_predictions on that shifted copy of the hold-out (shifted_holdouts)."""
    predictions = {
        name: gated_predictions(model, images, config, calibration, gate, device) for name, images in shifted.items()
    }
    if predictions:
        log.info("scored on %d shifted copies of the hold-out (%s)", len(predictions), ", ".join(predictions))
    return predictions
