"""Temperature scaling and the operating point: fitted on validation data, they do what they claim."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from shared.calibration import (
    Calibration,
    CalibrationError,
    choose_threshold,
    expected_calibration_error,
    fit_calibration,
    fit_temperature,
    plot_reliability,
    pneumonia_probability,
    recalibrate,
)


def overconfident_logits(n: int, scale: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and logits of a model whose true log-odds are `margin`, reported `scale` times too large."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.4).astype(int)
    margin = rng.normal(np.where(labels == 1, 1.0, -1.0), 1.2)  # true log-odds are 2 * 1.0 / 1.2^2 * margin
    true_log_odds = margin * (2 * 1.0 / 1.2**2)
    logits = np.stack([np.zeros(n), true_log_odds * scale], axis=1)
    return logits, labels


def test_temperature_recovers_a_known_overconfidence() -> None:
    logits, labels = overconfident_logits(4000, scale=3.0, seed=0)
    assert fit_temperature(logits, labels) == pytest.approx(3.0, rel=0.1)


def test_calibration_lowers_ece_and_keeps_the_ranking() -> None:
    logits, labels = overconfident_logits(2000, scale=4.0, seed=1)
    calibration = fit_calibration(logits, labels)
    assert calibration.ece_after < calibration.ece_before / 2
    before, after = pneumonia_probability(logits), pneumonia_probability(logits, calibration.temperature)
    assert roc_auc_score(labels, before) == pytest.approx(roc_auc_score(labels, after), abs=1e-12)
    held_out_logits, held_out_labels = overconfident_logits(2000, scale=4.0, seed=2)  # and it generalizes
    assert expected_calibration_error(
        pneumonia_probability(held_out_logits, calibration.temperature), held_out_labels
    ) < expected_calibration_error(pneumonia_probability(held_out_logits), held_out_labels)


def test_youden_threshold_maximizes_sensitivity_plus_specificity() -> None:
    logits, labels = overconfident_logits(1000, scale=1.0, seed=3)
    p = pneumonia_probability(logits)
    threshold, sensitivity, specificity = choose_threshold(p, labels)
    predicted = p >= threshold
    assert sensitivity == pytest.approx(predicted[labels == 1].mean())
    assert specificity == pytest.approx(1 - predicted[labels == 0].mean())
    for other in np.linspace(0.05, 0.95, 19):  # no other threshold does better on these data
        guess = p >= other
        assert guess[labels == 1].mean() - guess[labels == 0].mean() <= sensitivity + specificity - 1 + 1e-12


def test_target_sensitivity_is_reached_with_the_highest_such_threshold() -> None:
    logits, labels = overconfident_logits(1000, scale=1.0, seed=4)
    calibration = fit_calibration(logits, labels, target_sensitivity=0.95)
    p = pneumonia_probability(logits, calibration.temperature)
    assert (p[labels == 1] >= calibration.threshold).mean() >= 0.95
    assert calibration.val_sensitivity >= 0.95 and calibration.method == "target-sensitivity"
    just_above = np.nextafter(calibration.threshold, 1.0)
    assert (p[labels == 1] >= just_above).mean() < 0.95  # any higher threshold misses the target
    assert Calibration.from_dict(calibration.to_dict()) == calibration


def test_bad_inputs_are_refused() -> None:
    logits, labels = overconfident_logits(100, scale=1.0, seed=5)
    with pytest.raises(CalibrationError, match="both classes"):
        fit_calibration(logits, np.zeros_like(labels))
    with pytest.raises(CalibrationError, match="target sensitivity"):
        fit_calibration(logits, labels, target_sensitivity=1.5)


def test_reliability_diagram_is_written(tmp_path: Path) -> None:
    logits, labels = overconfident_logits(500, scale=3.0, seed=6)
    calibration = fit_calibration(logits, labels)
    path = tmp_path / "reliability.png"
    plot_reliability(
        {
            "uncalibrated": (pneumonia_probability(logits), labels),
            "calibrated": (pneumonia_probability(logits, calibration.temperature), labels),
        },
        path,
    )
    assert Image.open(path).size[0] > 100


def test_recalibrating_a_softmax_probability_equals_scaling_the_logits() -> None:
    logits, _ = overconfident_logits(50, scale=2.0, seed=7)
    calibration = Calibration(2.5, 0.5, "youden", None, 0.9, 0.9, 0.1, 0.05, 50)
    expected = pneumonia_probability(logits, 2.5)
    got = [recalibrate(p, calibration) for p in pneumonia_probability(logits)]
    np.testing.assert_allclose(got, expected, atol=1e-9)
    assert recalibrate(0.3, None) == 0.3
