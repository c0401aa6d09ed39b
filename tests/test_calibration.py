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
    prevalence_threshold,
    recalibrate,
)
from shared.operating_rule import OperatingRule


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
    calibration = fit_calibration(logits, labels, OperatingRule.parse("sensitivity:0.95"))
    p = pneumonia_probability(logits, calibration.temperature)
    assert (p[labels == 1] >= calibration.threshold).mean() >= 0.95
    assert calibration.val_sensitivity >= 0.95 and calibration.method == "target-sensitivity"
    just_above = np.nextafter(calibration.threshold, 1.0)
    assert (p[labels == 1] >= just_above).mean() < 0.95  # any higher threshold misses the target
    assert Calibration.from_dict(calibration.to_dict()) == calibration


def test_the_prevalence_rule_is_the_arg_max_at_the_validation_prevalence_and_bayes_at_another() -> None:
    """Unstated, the prevalence rule's threshold is 0.5 on the calibrated probability, which labels as the plain
    arg-max does (temperature scaling keeps the sign of the logit difference). At a stated prevalence it is the
    threshold above which the posterior, its prior moved from the validation prevalence to the stated one, is >= 0.5;
    on data drawn at that prevalence from a calibrated model it gives the best accuracy of any threshold."""
    logits, labels = overconfident_logits(4000, scale=2.0, seed=7)
    calibration = fit_calibration(logits, labels)
    assert calibration.method == "prevalence" and calibration.threshold == 0.5
    assert calibration.validation_prevalence == pytest.approx(labels.mean()) and calibration.model_prior is None
    calibrated = pneumonia_probability(logits, calibration.temperature) >= calibration.threshold
    np.testing.assert_array_equal(calibrated, logits[:, 1] > logits[:, 0])
    assert Calibration.from_dict(calibration.to_dict()).rule == OperatingRule("prevalence")

    # A model trained class-balanced stands at a 0.5 prior: at the validation prevalence the rule moves the threshold
    # by the prior shift from 0.5 to it, as it would for a stated prevalence on a model trained at the data's prior.
    balanced = fit_calibration(logits, labels, model_prior=0.5)
    assert balanced.threshold == pytest.approx(prevalence_threshold(labels.mean(), 0.5))
    assert (balanced.threshold < 0.5) == (labels.mean() > 0.5) and "0.5 prior" in balanced.describe()
    stated = fit_calibration(logits, labels, OperatingRule.parse("prevalence:0.2"))
    reference = labels.mean()
    p = 0.5 * np.ones(1) + np.linspace(-0.49, 0.49, 99)[:, None].ravel()  # probabilities calibrated at `reference`
    posterior = p * 0.2 / reference / (p * 0.2 / reference + (1 - p) * 0.8 / (1 - reference))
    assert np.all((p >= stated.threshold) == (posterior >= 0.5 - 1e-12))
    assert stated.prevalence == 0.2 and "stated" in stated.describe() and stated.threshold > 0.5
    # Draw a set at prevalence 0.2 from the calibrated model: no threshold on a grid beats the rule's accuracy.
    rng = np.random.default_rng(0)
    scores = pneumonia_probability(logits, calibration.temperature)
    keep = np.concatenate([rng.choice(np.flatnonzero(labels == 1), 400), rng.choice(np.flatnonzero(labels == 0), 1600)])
    accuracy = lambda t: ((scores[keep] >= t) == labels[keep]).mean()  # noqa: E731
    assert accuracy(stated.threshold) >= max(accuracy(t) for t in np.linspace(0.05, 0.95, 91)) - 0.01


def test_bad_inputs_are_refused() -> None:
    logits, labels = overconfident_logits(100, scale=1.0, seed=5)
    with pytest.raises(CalibrationError, match="both classes"):
        fit_calibration(logits, np.zeros_like(labels))
    with pytest.raises(CalibrationError, match="target sensitivity"):
        fit_calibration(logits, labels, OperatingRule("target-sensitivity", 1.5))
    for text in (
        "youden:0.3",
        "sensitivity",
        "sensitivity:1.5",
        "prevalence:1",
        "prevalence:0",
        "argmax",
        "prevalence:x",
    ):
        with pytest.raises(ValueError, match="expected youden, sensitivity:S"):
            OperatingRule.parse(text)


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
