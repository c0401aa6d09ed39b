"""Calibrated probabilities and a chosen operating point, fitted on validation data only.

    calibration = fit_calibration(val_logits, val_labels)                   # the prevalence rule
    calibration = fit_calibration(val_logits, val_labels, OperatingRule.parse("sensitivity:0.95"))
    p = calibrated_probability(test_logits, calibration.temperature)       # P(pneumonia)
    predicted = p >= calibration.threshold

Temperature scaling (Guo et al. 2017): one scalar T > 0 divides the logits; it is fitted by minimizing the negative
log-likelihood on validation logits, so it changes confidence, never the ranking (AUROC is unchanged). The threshold
on the calibrated P(pneumonia) then follows the operating rule a user states (OperatingRule, --operating-rule):

    prevalence[:P]     the Bayes rule for accuracy at a stated pneumonia prevalence P of the data the model will see
                       (default: the validation data's own): the label is pneumonia where P(pneumonia) is still
                       >= 0.5 after the prior shift from the prior the model's probabilities stand at to P (Saerens
                       et al. 2002). That prior is 0.5 for a model trained with class weights or a balanced sampler
                       (a temperature cannot shift it), else the validation data's. Nothing is fitted beyond the
                       temperature, so it does not move with the particular validation images.
    sensitivity:S      the highest threshold that still reaches sensitivity S on the validation data: the choice of
                       a screening user who must not miss pneumonia.
    youden             Youden's J (sensitivity + specificity - 1, the ROC point farthest above chance) on the
                       validation data. On an easy, in-distribution validation set it sits far from 0.5 and costs
                       specificity under shift (README, "The estimate under shift").

Both are saved with the model (its config's "calibration" entry) and used by evaluate and by the served handler. They
are never fitted on test data: callers pass validation logits only.

A cross-validated model's threshold may instead be chosen on the pooled out-of-fold validation predictions of all
fold models (each after its own temperature): `pooled_calibration` gives a fold model's calibration with that
threshold, its temperature untouched.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from shared.errors import PneumoniaError
from shared.figures import save_figure
from shared.operating_rule import YOUDEN, OperatingRule, describe_calibration

NUM_BINS = 10
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0


class CalibrationError(PneumoniaError):
    """Calibration cannot be fitted (e.g. validation data with one class only)."""


@dataclass(frozen=True)
class Calibration:
    """A fitted temperature and decision threshold, with how they were chosen and what they did on validation."""

    temperature: float
    threshold: float
    method: str  # "youden", "target-sensitivity" or "prevalence" (OperatingRule)
    target_sensitivity: float | None
    val_sensitivity: float
    val_specificity: float
    ece_before: float
    ece_after: float
    n_val: int  # validation images the temperature was fitted on
    # "per-fold": the threshold was chosen on the same n_val images; "pooled": on n_threshold pooled out-of-fold
    # validation predictions of every fold model (val_sensitivity / val_specificity are then the pooled ones).
    threshold_rule: str = "per-fold"
    n_threshold: int | None = None
    fold_threshold: float | None = None  # the threshold this fold's own validation data alone gives
    # "prevalence": the stated prevalence (None: the validation data's own); the validation data's; and the prior the
    # calibrated probabilities stand at (None: the validation data's; 0.5 for a model trained class-balanced)
    prevalence: float | None = None
    validation_prevalence: float | None = None
    model_prior: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def rule(self) -> OperatingRule:
        value = self.target_sensitivity if self.method == "target-sensitivity" else self.prevalence
        return OperatingRule(self.method, value)

    def describe(self) -> str:
        """The rule in words, with what it was applied to: for answers, model cards and reports."""
        return describe_calibration(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        return cls(**data)


def pneumonia_probability(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """N x 2 logits -> P(pneumonia) after dividing the logits by `temperature`."""
    scaled = torch.as_tensor(np.asarray(logits, dtype=np.float64)) / temperature
    return torch.softmax(scaled, dim=1)[:, 1].numpy()


def calibrated_probability(logits: np.ndarray, calibration: Calibration | None) -> np.ndarray:
    """P(pneumonia) with the calibration's temperature (plain softmax without one)."""
    return pneumonia_probability(logits, calibration.temperature if calibration is not None else 1.0)


def recalibrate(p_softmax: float, calibration: Calibration | None) -> float:
    """A plain-softmax P(pneumonia) with the calibration's temperature applied (two classes: the logit difference is
    logit(p), so softmax(z / T) = sigmoid(logit(p) / T))."""
    if calibration is None:
        return p_softmax
    p = min(max(p_softmax, 1e-15), 1 - 1e-15)
    return float(1.0 / (1.0 + np.exp(-np.log(p / (1 - p)) / calibration.temperature)))


def decision_threshold(calibration: Calibration | None) -> float:
    """The calibration's threshold, else 0.5."""
    return calibration.threshold if calibration is not None else 0.5


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, num_bins: int = NUM_BINS) -> float:
    """ECE of P(pneumonia): bin-weighted |observed pneumonia rate - mean predicted probability| over equal-width
    probability bins (the binary form: the predicted probability of the positive class, not of the argmax)."""
    probabilities, labels = np.asarray(probabilities, dtype=np.float64), np.asarray(labels)
    bins = np.minimum((probabilities * num_bins).astype(int), num_bins - 1)
    error = 0.0
    for b in range(num_bins):
        members = bins == b
        if members.any():
            error += members.mean() * abs(labels[members].mean() - probabilities[members].mean())
    return float(error)


def reliability_bins(probabilities: np.ndarray, labels: np.ndarray, num_bins: int = NUM_BINS) -> dict[str, list]:
    """Per equal-width bin: mean predicted probability, observed pneumonia rate and count (empty bins left out)."""
    probabilities, labels = np.asarray(probabilities, dtype=np.float64), np.asarray(labels)
    bins = np.minimum((probabilities * num_bins).astype(int), num_bins - 1)
    out: dict[str, list] = {"predicted": [], "observed": [], "count": []}
    for b in range(num_bins):
        members = bins == b
        if members.any():
            out["predicted"].append(float(probabilities[members].mean()))
            out["observed"].append(float(labels[members].mean()))
            out["count"].append(int(members.sum()))
    return out


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T > 0 minimizing the NLL of softmax(logits / T) on these (validation) logits."""
    x = torch.as_tensor(np.asarray(logits, dtype=np.float64))
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)  # T = exp(log_t) stays positive
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x / log_t.exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(np.clip(log_t.exp().item(), MIN_TEMPERATURE, MAX_TEMPERATURE))


def prevalence_threshold(prevalence: float, reference_prevalence: float) -> float:
    """The threshold on a probability calibrated at `reference_prevalence` above which P(pneumonia) is >= 0.5 once the
    prior is shifted to `prevalence`: p * a >= (1 - p) * b, with a = P / P_ref and b = (1 - P) / (1 - P_ref)."""
    a, b = prevalence / reference_prevalence, (1.0 - prevalence) / (1.0 - reference_prevalence)
    return b / (a + b)


def choose_threshold(
    probabilities: np.ndarray, labels: np.ndarray, rule: OperatingRule = YOUDEN, model_prior: float | None = None
) -> tuple[float, float, float]:
    """(threshold, sensitivity, specificity) on these data under `rule`: Youden's J, the highest threshold reaching
    the target sensitivity, or the prevalence rule's threshold, which reads only the labels' prevalence: the Bayes
    rule for accuracy at the stated prevalence (or these data's) for probabilities standing at `model_prior` (None:
    these data's prevalence). Predictions are `probability >= threshold`."""
    labels, probabilities = np.asarray(labels), np.asarray(probabilities)
    if rule.method == "prevalence":
        observed = float(labels.mean())
        target = rule.value if rule.value is not None else observed
        threshold = prevalence_threshold(target, model_prior if model_prior is not None else observed)
        predicted = probabilities >= threshold
        return threshold, float(predicted[labels == 1].mean()), float((~predicted[labels == 0]).mean())
    fpr, tpr, thresholds = roc_curve(labels, probabilities)
    thresholds = np.minimum(thresholds, 1.0)  # sklearn's first threshold is +inf ("predict nothing positive")
    if rule.method == "youden":
        best = int(np.argmax(tpr - fpr))
    else:
        if rule.value is None or not 0.0 < rule.value <= 1.0:
            raise CalibrationError(f"target sensitivity must be in (0, 1], got {rule.value}")
        best = int(np.argmax(tpr >= rule.value - 1e-12))  # thresholds decrease, so the first is highest
    return float(thresholds[best]), float(tpr[best]), float(1.0 - fpr[best])


def fit_calibration(
    logits: np.ndarray, labels: np.ndarray, rule: OperatingRule | None = None, model_prior: float | None = None
) -> Calibration:
    """Temperature and threshold (under `rule`; default the prevalence rule at the validation data's prevalence)
    from validation logits (N x 2) and labels (0 normal, 1 pneumonia). `model_prior`: the class prior the model was
    trained at, where it is not the data's: 0.5 for class-weighted or class-balanced training, whose scores a
    temperature cannot move to the data's prior (a temperature rescales, it does not shift)."""
    rule = rule or OperatingRule("prevalence")
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        raise CalibrationError("calibration needs validation data with both classes")
    temperature = fit_temperature(logits, labels)
    before = pneumonia_probability(logits)
    after = pneumonia_probability(logits, temperature)
    threshold, sensitivity, specificity = choose_threshold(after, labels, rule, model_prior)
    return Calibration(
        temperature=temperature,
        threshold=threshold,
        method=rule.method,
        target_sensitivity=rule.value if rule.method == "target-sensitivity" else None,
        val_sensitivity=sensitivity,
        val_specificity=specificity,
        ece_before=expected_calibration_error(before, labels),
        ece_after=expected_calibration_error(after, labels),
        n_val=len(labels),
        n_threshold=len(labels),
        fold_threshold=threshold,
        prevalence=rule.value if rule.method == "prevalence" else None,
        validation_prevalence=float(labels.mean()),
        model_prior=model_prior,
    )


def pooled_calibration(calibration: Calibration, probabilities: np.ndarray, labels: np.ndarray) -> Calibration:
    """`calibration` (its temperature kept) with the threshold chosen by its rule on pooled validation
    predictions: P(pneumonia) of every fold model on its own validation fold, after that model's temperature.
    Never pass hold-out or test predictions."""
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        raise CalibrationError("a pooled threshold needs validation predictions of both classes")
    threshold, sensitivity, specificity = choose_threshold(
        np.asarray(probabilities), labels, calibration.rule, calibration.model_prior
    )
    return replace(
        calibration,
        validation_prevalence=float(labels.mean()),
        threshold=threshold,
        val_sensitivity=sensitivity,
        val_specificity=specificity,
        threshold_rule="pooled",
        n_threshold=len(labels),
        fold_threshold=calibration.threshold if calibration.fold_threshold is None else calibration.fold_threshold,
    )


def plot_reliability(
    curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str = "Reliability diagram"
) -> None:
    """One reliability curve per entry {name: (probabilities, labels)}, with the diagonal and each ECE."""
    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="gray", linestyle="--", label="perfectly calibrated")
    for name, (probabilities, labels) in curves.items():
        bins = reliability_bins(probabilities, labels)
        ece = expected_calibration_error(probabilities, labels)
        ax.plot(bins["predicted"], bins["observed"], marker="o", label=f"{name} (ECE {ece:.3f})")
    ax.set(xlabel="predicted P(pneumonia)", ylabel="observed pneumonia rate", xlim=(0, 1), ylim=(0, 1), title=title)
    ax.legend(loc="upper left")
    save_figure(fig, path)
