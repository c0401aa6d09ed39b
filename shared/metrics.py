"""Binary classification metrics (pneumonia = positive class) and their summary over cross-validation folds."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_score, recall_score, roc_auc_score


def binary_metrics(y_true: Sequence[int], p_pneumonia: Sequence[float], threshold: float = 0.5) -> dict[str, Any]:
    """Metrics of predicting pneumonia when p_pneumonia >= threshold.

    accuracy, precision, recall, f1 (sklearn, average="weighted", as the seed); auroc (None when only one class is
    present); sensitivity = tp / (tp + fn) and specificity = tn / (tn + fp) (None without positives / negatives);
    confusion_matrix [[tn, fp], [fn, tp]]; n; n_positive.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    scores = np.asarray(p_pneumonia, dtype=np.float64)
    if len(y_true) == 0 or len(y_true) != len(scores):
        raise ValueError(f"need as many scores as labels, at least one: got {len(y_true)} labels, {len(scores)} scores")
    y_pred = (scores >= threshold).astype(np.int64)
    (tn, fp), (fn, tp) = confusion_matrix(y_true, y_pred, labels=[0, 1]).tolist()
    both_classes = len(np.unique(y_true)) == 2
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "precision": float(precision_score(y_true, y_pred, average="weighted", zero_division=0)),
        "recall": float(recall_score(y_true, y_pred, average="weighted", zero_division=0)),
        "f1": float(f1_score(y_true, y_pred, average="weighted", zero_division=0)),
        "auroc": float(roc_auc_score(y_true, scores)) if both_classes else None,
        "sensitivity": tp / (tp + fn) if tp + fn else None,
        "specificity": tn / (tn + fp) if tn + fp else None,
        "confusion_matrix": [[tn, fp], [fn, tp]],
        "threshold": threshold,
        "n": len(y_true),
        "n_positive": tp + fn,
    }


COMMON_SENSITIVITY = 0.95  # the common operating point strategies are compared at (specificity at this sensitivity)


def specificity_at_sensitivity(y_true: Sequence[int], p_pneumonia: Sequence[float], sensitivity: float) -> float | None:
    """Specificity at the highest threshold that still reaches `sensitivity` on these data: a point read off the ROC
    curve, to compare models at a common operating point so that no threshold rule can pass for a better model. No
    threshold is fitted for use. None without positives or negatives."""
    y_true, scores = np.asarray(y_true), np.asarray(p_pneumonia, dtype=np.float64)
    positives, negatives = np.sort(scores[y_true == 1])[::-1], scores[y_true == 0]
    if not len(positives) or not len(negatives):
        return None
    needed = max(1, math.ceil(sensitivity * len(positives) - 1e-9))  # positives at or above the threshold
    return float((negatives < positives[needed - 1]).mean())


NOT_SUMMARIZED = ("fold", "threshold")  # identifiers and settings, not measurements
# Metrics that are proportions (or AUROC): their intervals are cut to [0, 1], where the t-interval of a few folds
# would otherwise reach past what the metric can be.
RATES = frozenset({"accuracy", "precision", "recall", "f1", "auroc", "sensitivity", "specificity"})


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def summarize_folds(fold_metrics: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean, sample standard deviation and 95% confidence interval of the mean (t-distribution, k - 1 degrees of
    freedom) of every scalar metric across folds; the interval of a rate (RATES) is cut to [0, 1].

    A metric missing (None) in any fold is None in the summary; std_dev and ci95 are None for a single fold.
    Returns {"average": {metric: mean}, "std_dev": {metric: sd}, "ci95": {metric: [low, high]}}.
    """
    if not fold_metrics:
        raise ValueError("no folds to summarize")
    names = [
        name
        for name, value in fold_metrics[0].items()
        if name not in NOT_SUMMARIZED and (value is None or _is_number(value))
    ]
    k = len(fold_metrics)
    summary: dict[str, dict[str, Any]] = {"average": {}, "std_dev": {}, "ci95": {}}
    for name in names:
        values = [fold.get(name) for fold in fold_metrics]
        if not all(_is_number(v) for v in values):
            summary["average"][name] = summary["std_dev"][name] = summary["ci95"][name] = None
            continue
        mean = float(np.mean(values))
        summary["average"][name] = mean
        if k < 2:
            summary["std_dev"][name] = summary["ci95"][name] = None
            continue
        sd = float(np.std(values, ddof=1))
        half_width = float(stats.t.ppf(0.975, df=k - 1)) * sd / math.sqrt(k)
        summary["std_dev"][name] = sd
        low, high = mean - half_width, mean + half_width
        summary["ci95"][name] = [max(low, 0.0), min(high, 1.0)] if name in RATES else [low, high]
    return summary
