"""Binary metrics on hand-computed examples, and the cross-fold summary's mean, SD and t-interval."""

from __future__ import annotations

import math

import pytest

from shared.metrics import binary_metrics, summarize_folds

# 3 normals, 5 pneumonias. At threshold 0.5: tn 2, fp 1 (0.6), fn 2 (0.4, 0.3), tp 3.
Y_TRUE = [0, 0, 0, 1, 1, 1, 1, 1]
SCORES = [0.1, 0.6, 0.2, 0.9, 0.8, 0.4, 0.7, 0.3]


def test_binary_metrics_by_hand() -> None:
    m = binary_metrics(Y_TRUE, SCORES)
    assert m["confusion_matrix"] == [[2, 1], [2, 3]]
    assert m["accuracy"] == pytest.approx(5 / 8)
    assert m["sensitivity"] == pytest.approx(3 / 5)
    assert m["specificity"] == pytest.approx(2 / 3)
    # Weighted by support (3 normal, 5 pneumonia): precision normal 2/4, pneumonia 3/4.
    assert m["precision"] == pytest.approx((3 * 0.5 + 5 * 0.75) / 8)
    assert m["recall"] == pytest.approx((3 * (2 / 3) + 5 * (3 / 5)) / 8)
    assert m["f1"] == pytest.approx((3 * (4 / 7) + 5 * (2 / 3)) / 8)
    # 13 of the 15 (positive, negative) pairs are ranked correctly.
    assert m["auroc"] == pytest.approx(13 / 15)
    assert (m["n"], m["n_positive"]) == (8, 5)


def test_threshold_moves_the_operating_point() -> None:
    m = binary_metrics(Y_TRUE, SCORES, threshold=0.35)
    assert m["confusion_matrix"] == [[2, 1], [1, 4]]
    assert m["sensitivity"] == pytest.approx(4 / 5)
    assert m["auroc"] == pytest.approx(13 / 15)  # threshold-free


def test_one_class_has_no_auroc_and_no_specificity() -> None:
    m = binary_metrics([1, 1, 1], [0.9, 0.2, 0.7])
    assert m["auroc"] is None and m["specificity"] is None
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["confusion_matrix"] == [[0, 0], [1, 2]]


def test_mismatched_or_empty_inputs_are_rejected() -> None:
    with pytest.raises(ValueError):
        binary_metrics([0, 1], [0.5])
    with pytest.raises(ValueError):
        binary_metrics([], [])


def test_summarize_folds_t_interval() -> None:
    folds = [
        {"fold": 1, "accuracy": 0.8, "auroc": 0.85, "confusion_matrix": [[1, 0], [0, 1]]},
        {"fold": 2, "accuracy": 0.9, "auroc": None, "confusion_matrix": [[1, 0], [0, 1]]},
        {"fold": 3, "accuracy": 1.0, "auroc": 0.95, "confusion_matrix": [[1, 0], [0, 1]]},
    ]
    summary = summarize_folds(folds)
    assert summary["average"]["accuracy"] == pytest.approx(0.9)
    assert summary["std_dev"]["accuracy"] == pytest.approx(0.1)  # sample SD (k - 1)
    half_width = 4.302653 * 0.1 / math.sqrt(3)  # t(0.975, df=2) from tables
    # [0.652, 1.148] as a t-interval: a proportion's is cut at 1; an unbounded metric's is not.
    assert summary["ci95"]["accuracy"] == pytest.approx([0.9 - half_width, 1.0], abs=1e-6)
    losses = summarize_folds([{"loss": value} for value in (0.8, 0.9, 1.0)])
    assert losses["ci95"]["loss"] == pytest.approx([0.9 - half_width, 0.9 + half_width], abs=1e-6)
    # A metric missing in a fold is not averaged over the others; non-scalars and the fold number are left out.
    assert summary["average"]["auroc"] is None and summary["ci95"]["auroc"] is None
    assert "fold" not in summary["average"] and "confusion_matrix" not in summary["average"]


def test_summarize_one_fold_has_no_spread() -> None:
    summary = summarize_folds([{"accuracy": 0.7}])
    assert summary["average"]["accuracy"] == pytest.approx(0.7)
    assert summary["std_dev"]["accuracy"] is None and summary["ci95"]["accuracy"] is None


def test_summarize_real_metrics_per_fold() -> None:
    folds = [binary_metrics(Y_TRUE, SCORES), binary_metrics(Y_TRUE, SCORES, threshold=0.35)]
    summary = summarize_folds(folds)
    assert summary["average"]["sensitivity"] == pytest.approx((0.6 + 0.8) / 2)
    assert summary["average"]["auroc"] == pytest.approx(13 / 15)
    assert summary["std_dev"]["auroc"] == pytest.approx(0.0)
    assert "threshold" not in summary["average"]
