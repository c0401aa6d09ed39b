"""A strategy's final model, the one it serves: the fold-ensemble of its k fold models (--final-model fold-ensemble,
the default), so that it has learned from every development image, or the fold model with the best validation AUROC
(best-fold, the old behaviour).

The ensemble is calibrated and gated as a model of its own, on development data only:
- each member's probability is its own temperature's (fitted on its validation fold), and the ensemble averages them;
- its threshold follows the run's operating rule on the members' pooled out-of-fold validation predictions (the
  prevalence rule reads only priors, so it holds for the mean probability as for each member's);
- its plausibility gate is fitted on its own features (the members' side by side): the bounds and score models on
  half of the development images, the score thresholds on the other half.
Then it is scored like every fold model: on the hold-out at 0.5 and at its threshold, and under shift with its gate.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from services.trainer.classification.operating_point import operating_metrics, pooled_validation_predictions
from services.trainer.classification.shift import fold_shift_scores, gated_predictions, shifted_holdout_predictions
from services.trainer.classification.state import fold_model_path
from shared import layout
from shared.calibration import Calibration, CalibrationError, expected_calibration_error, pooled_calibration
from shared.configs import ClassifierTrainingConfig
from shared.datasets import LabelledImages
from shared.errors import DatasetError
from shared.images import atomic_write_bytes
from shared.metrics import binary_metrics
from shared.models.classifier import classifier_transform, load_classifier, save_classifier
from shared.models.ensemble import FoldEnsemble, describe_model, ensemble_config
from shared.plausibility import PlausibilityGate, fit_gate

log = logging.getLogger(__name__)


def uncalibrated(calibrated: np.ndarray, temperature: float) -> np.ndarray:
    """Undo a temperature: softmax(z / T) = sigmoid(logit(p) / T), so p = sigmoid(T * logit(p_T))."""
    p = np.clip(np.asarray(calibrated, dtype=np.float64), 1e-15, 1 - 1e-15)
    return 1.0 / (1.0 + np.exp(-temperature * np.log(p / (1 - p))))


def ensemble_calibration(records: list[dict[str, Any]]) -> Calibration:
    """The ensemble's calibration: temperature 1 (each member's is inside it), the threshold chosen by the run's rule
    on the members' pooled out-of-fold validation predictions, and the ECE of those before and after the members'
    temperatures."""
    probabilities, labels = pooled_validation_predictions(records)
    plain = np.concatenate(
        [
            uncalibrated(record["validation_predictions"]["calibrated"], record["calibration"]["temperature"])
            for record in records
        ]
    )
    try:
        pooled = pooled_calibration(Calibration.from_dict(records[0]["calibration"]), probabilities, labels)
    except CalibrationError as exc:
        raise DatasetError(f"cannot choose the fold-ensemble's threshold: {exc}") from exc
    return replace(
        pooled,
        temperature=1.0,
        n_val=len(labels),
        ece_before=expected_calibration_error(plain, labels),
        ece_after=expected_calibration_error(probabilities, labels),
        fold_threshold=None,
    )


def fold_checkpoint(options: ClassifierTrainingConfig, fold: int) -> Path:
    """Where the run's fold model `fold` is."""
    return fold_model_path(Path(options.model_dir), fold, options.strategy, options.arch)


def gate_halves(develop: LabelledImages, seed: int) -> tuple[LabelledImages, LabelledImages]:
    """Two disjoint seeded halves of the development images: the gate's fitting and threshold sets."""
    order = np.random.default_rng(seed).permutation(len(develop))
    half = len(order) // 2
    return develop.subset(np.sort(order[:half])), develop.subset(np.sort(order[half:]))


def build_fold_ensemble(
    records: list[dict[str, Any]],
    options: ClassifierTrainingConfig,
    develop: LabelledImages,
    device: torch.device,
) -> tuple[FoldEnsemble, dict[str, Any]]:
    """(the fold models as one FoldEnsemble on `device`, its config with calibration and plausibility gate)."""
    members, temperatures, member_config = [], [], None
    for record in records:
        model, config = load_classifier(fold_checkpoint(options, record["fold"]))
        members.append(model)
        temperatures.append(float(config["calibration"]["temperature"]))
        member_config = member_config or config
    assert member_config is not None
    ensemble = FoldEnsemble(members, temperatures).to(device).eval()
    config = ensemble_config(member_config, [record["fold"] for record in records], temperatures)
    calibration = ensemble_calibration(records)
    fit, threshold = gate_halves(develop, options.seed)
    gate = fit_gate(ensemble, classifier_transform(config, train=False), fit, threshold, device, seed=options.seed)
    log.info(
        "%s: fold-ensemble of %d models, threshold %.3f (%s), gate fitted on %d + %d development images",
        options.strategy,
        len(members),
        calibration.threshold,
        calibration.describe(),
        len(fit),
        len(threshold),
    )
    return ensemble, {**config, "calibration": calibration.to_dict(), "plausibility": gate.to_dict()}


def best_fold(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The fold record whose model has the best validation AUROC (the first on ties)."""

    def auroc(record: dict[str, Any]) -> float:
        value = record["val_metrics"]["auroc"]
        return -1.0 if value is None else value

    return max(records, key=auroc)


def final_fold_ensemble(
    records: list[dict[str, Any]],
    options: ClassifierTrainingConfig,
    develop: LabelledImages,
    holdout: LabelledImages,
    shifted_sets: dict[str, LabelledImages],
    path: Path,
    device: torch.device,
) -> dict[str, Any]:
    """Build the fold-ensemble, score it on the hold-out and its shifted copies (with its gate), save it at `path`;
    return its record."""
    ensemble, config = build_fold_ensemble(records, options, develop, device)
    calibration = Calibration.from_dict(config["calibration"])
    gate = PlausibilityGate.from_dict(config["plausibility"])
    clean = gated_predictions(ensemble, holdout, config, calibration, gate, device)
    shifted = shifted_holdout_predictions(ensemble, shifted_sets, config, calibration, gate, device)
    save_classifier(path, ensemble, config)
    labels = holdout.labels.tolist()
    return {
        "kind": "fold-ensemble",
        "description": describe_model(config),
        "folds": [record["fold"] for record in records],
        "n_train_real": len(develop),  # each member saw (k - 1) / k of them, together all
        "holdout": binary_metrics(labels, clean["uncalibrated"]),  # at 0.5
        "holdout_operating_point": operating_metrics(
            labels, clean["uncalibrated"], clean["calibrated"], calibration.threshold
        ),
        "calibration": calibration.to_dict(),
        "shifted": fold_shift_scores(
            {
                "calibration": config["calibration"],
                "holdout_probabilities": {"labels": labels, **clean},
                "holdout_refused": clean["refused"],
                "shifted_probabilities": shifted,
            }
        )
        if shifted
        else None,
    }


def final_best_fold(records: list[dict[str, Any]], options: ClassifierTrainingConfig, path: Path) -> dict[str, Any]:
    """Copy the best fold model to `path` (no retraining); return its record."""
    best = best_fold(records)
    atomic_write_bytes(path, fold_checkpoint(options, best["fold"]).read_bytes())
    return {
        "kind": "best-fold",
        "description": f"the {options.arch} model of fold {best['fold']}, the best validation AUROC",
        "folds": [best["fold"]],
        "n_train_real": best["n_train_real"],
        "holdout": best["holdout_metrics"],
        "holdout_operating_point": best["holdout_operating_point"],
        "calibration": best["calibration"],
        "shifted": fold_shift_scores(best) if best.get("shifted_probabilities") else None,
    }


def final_model(
    records: list[dict[str, Any]],
    options: ClassifierTrainingConfig,
    develop: LabelledImages,
    holdout: LabelledImages,
    shifted_sets: dict[str, LabelledImages],
    device: torch.device,
) -> dict[str, Any]:
    """Write the strategy's served model (--final-model) where the strategy's model goes; return its record: kind,
    description, folds, the real images it learned from, hold-out metrics at 0.5 and at its threshold, calibration,
    and its scores under shift (`shifted_sets`: shift.shifted_holdouts)."""
    path = Path(options.model_dir) / layout.strategy_model_name(options.strategy, options.arch)
    if options.final_model == "best-fold" or len(records) == 1:
        return final_best_fold(records, options, path)
    return final_fold_ensemble(records, options, develop, holdout, shifted_sets, path, device)
