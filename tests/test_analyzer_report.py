"""The analyzer's metrics side: loading, paired significance tests against scipy, Holm, and the verdict in words."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from services.analyzer.report import (
    compare_strategies,
    fold_verdict,
    holm_adjust,
    load_results,
    mean_over_folds,
    paired_test,
    render_report,
)
from shared.errors import DatasetError

BASELINE_ACC = [0.80, 0.82, 0.78, 0.81, 0.79]
BASELINE_AUROC = [0.86, 0.88, 0.85, 0.87, 0.86]
# augmented: consistently better by about 0.05; curriculum: noise around the baseline
AUGMENTED_ACC = [b + d for b, d in zip(BASELINE_ACC, [0.05, 0.04, 0.06, 0.05, 0.045], strict=True)]
AUGMENTED_AUROC = [b + d for b, d in zip(BASELINE_AUROC, [0.03, 0.035, 0.025, 0.03, 0.04], strict=True)]
CURRICULUM_ACC = [b + d for b, d in zip(BASELINE_ACC, [0.01, -0.02, 0.015, -0.01, 0.005], strict=True)]
CURRICULUM_AUROC = [b + d for b, d in zip(BASELINE_AUROC, [-0.01, 0.02, -0.015, 0.01, 0.0], strict=True)]


def fold_metrics(fold: int, accuracy: float, auroc: float) -> dict:
    return {
        "fold": fold,
        "accuracy": accuracy,
        "precision": accuracy,
        "recall": accuracy,
        "f1": accuracy,
        "auroc": auroc,
        "sensitivity": accuracy,
        "specificity": accuracy,
        "confusion_matrix": [[10, 2], [3, 15]],
        "threshold": 0.5,
        "n": 30,
        "n_positive": 18,
    }


def write_strategy(
    metrics_dir: Path, strategy: str, accuracy: list[float], auroc: list[float], epochs: int = 3
) -> None:
    """The three files train-classifier writes, in its format, with the given per-fold hold-out metrics."""
    folds = [fold_metrics(i + 1, a, u) for i, (a, u) in enumerate(zip(accuracy, auroc, strict=True))]
    several = len(accuracy) > 1
    summary = {
        "average": {"accuracy": float(np.mean(accuracy)), "auroc": float(np.mean(auroc))},
        "std_dev": {"accuracy": float(np.std(accuracy)), "auroc": float(np.std(auroc))},
        "ci95": {
            "accuracy": [min(accuracy), max(accuracy)] if several else None,
            "auroc": [min(auroc), max(auroc)] if several else None,
        },
    }
    history = {
        "strategy": strategy,
        "config": {"epochs": epochs},
        "folds": [
            {
                "fold": i + 1,
                "epochs": [
                    {
                        "epoch": e,
                        "train_loss": 1.0 / (e + 1) + i,
                        "train_acc": 0.5 + 0.1 * e,
                        "val_loss": 1.2 / (e + 1),
                        "val_acc": 0.5 + 0.05 * e,
                        "val_auroc": 0.6,
                        "synthetic_ratio": 0.0 if strategy == "baseline" else 0.25 * e,
                        "lr": 0.001,
                        "seconds": 1.0,
                    }
                    for e in range(epochs)
                ],
            }
            for i in range(len(accuracy))
        ],
    }
    final = {
        "strategy": strategy,
        "model": f"models/{strategy}_resnet18.pth",
        "selected_fold": 1,
        "holdout": folds[0],
        "holdout_per_fold": folds,
        "holdout_summary": summary,
        "class_balance": "weighted-loss",
        "n_train_real": 100,
        "n_synthetic_pool": 0 if strategy == "baseline" else 50,
        "dataset": "phantom",
        "arch": "resnet18",
    }
    metrics_dir.mkdir(parents=True, exist_ok=True)
    (metrics_dir / f"{strategy}_training_history.json").write_text(json.dumps(history))
    (metrics_dir / f"{strategy}_cv_summary.json").write_text(
        json.dumps({"strategy": strategy, "folds": folds, **summary})
    )
    (metrics_dir / f"{strategy}_final_metrics.json").write_text(json.dumps(final))


@pytest.fixture
def metrics_dir(tmp_path: Path) -> Path:
    write_strategy(tmp_path, "baseline", BASELINE_ACC, BASELINE_AUROC)
    write_strategy(tmp_path, "baseline-matched", BASELINE_ACC, BASELINE_AUROC)
    write_strategy(tmp_path, "augmented", AUGMENTED_ACC, AUGMENTED_AUROC)
    write_strategy(tmp_path, "curriculum", CURRICULUM_ACC, CURRICULUM_AUROC)
    return tmp_path


def test_paired_test_matches_scipy_and_the_t_interval() -> None:
    result = paired_test(BASELINE_ACC, CURRICULUM_ACC)
    diffs = np.subtract(CURRICULUM_ACC, BASELINE_ACC)
    low, high = stats.t.interval(0.95, df=len(diffs) - 1, loc=diffs.mean(), scale=stats.sem(diffs))
    assert result["n"] == 5
    assert result["mean_difference"] == pytest.approx(diffs.mean())
    assert result["ci95"] == pytest.approx([low, high])
    assert result["t_test_p"] == pytest.approx(stats.ttest_rel(CURRICULUM_ACC, BASELINE_ACC).pvalue)
    assert result["wilcoxon_p"] == pytest.approx(stats.wilcoxon(diffs).pvalue)
    assert result["wilcoxon_min_p"] == pytest.approx(2 / 32)


def test_paired_test_with_one_fold_or_no_variation_tests_nothing() -> None:
    one = paired_test([0.8], [0.9])
    assert one["mean_difference"] == pytest.approx(0.1)
    assert one["ci95"] is None and one["t_test_p"] is None and one["wilcoxon_p"] is None
    constant = paired_test([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])
    assert constant["t_test_p"] is None and constant["wilcoxon_p"] is None
    assert constant["ci95"] == pytest.approx([0.0, 0.0])


def test_holm_adjustment_by_hand() -> None:
    # sorted: 0.01*4 = 0.04; 0.03*3 = 0.09; 0.04*2 = 0.08 -> 0.09 (monotone); 0.2*1 = 0.2
    assert holm_adjust([0.01, 0.04, 0.03, 0.2]) == pytest.approx([0.04, 0.09, 0.09, 0.2])
    assert holm_adjust([0.5, 0.6]) == pytest.approx([1.0, 1.0])


def test_compare_strategies_gives_the_known_verdict(metrics_dir: Path) -> None:
    skipped: list[str] = []
    comparisons = compare_strategies(load_results(metrics_dir, skipped), skipped)
    assert skipped == []
    by_key = {(c["strategy"], c["metric"]): c for c in comparisons}
    assert set(by_key) == {(s, m) for s in ("augmented", "curriculum") for m in ("accuracy", "auroc")}

    raw = {
        ("augmented", "accuracy"): stats.ttest_rel(AUGMENTED_ACC, BASELINE_ACC).pvalue,
        ("augmented", "auroc"): stats.ttest_rel(AUGMENTED_AUROC, BASELINE_AUROC).pvalue,
        ("curriculum", "accuracy"): stats.ttest_rel(CURRICULUM_ACC, BASELINE_ACC).pvalue,
        ("curriculum", "auroc"): stats.ttest_rel(CURRICULUM_AUROC, BASELINE_AUROC).pvalue,
    }
    keys = list(raw)
    for key, adjusted in zip(keys, holm_adjust([raw[k] for k in keys]), strict=True):
        assert by_key[key]["t_test_p"] == pytest.approx(raw[key])
        assert by_key[key]["t_test_p_holm"] == pytest.approx(adjusted)

    assert by_key[("augmented", "accuracy")]["outcome"] == "helped"
    assert by_key[("augmented", "accuracy")]["mean_difference"] == pytest.approx(0.049)
    assert by_key[("augmented", "auroc")]["outcome"] == "helped"
    assert by_key[("curriculum", "accuracy")]["outcome"] == "no significant difference"
    assert by_key[("curriculum", "auroc")]["outcome"] == "no significant difference"
    assert fold_verdict(comparisons, "augmented").startswith("augmented over fold models: better than the baseline")
    assert "no significant difference" in fold_verdict(comparisons, "curriculum")


def test_a_worse_strategy_is_reported_as_hurting(tmp_path: Path) -> None:
    write_strategy(tmp_path, "baseline", BASELINE_ACC, BASELINE_AUROC)
    write_strategy(tmp_path, "augmented", BASELINE_ACC, BASELINE_AUROC)  # identical: untestable
    write_strategy(tmp_path, "curriculum", [a - 0.1 - 0.01 * i for i, a in enumerate(BASELINE_ACC)], BASELINE_AUROC)
    skipped: list[str] = []
    comparisons = compare_strategies(load_results(tmp_path, skipped), skipped)
    outcomes = {(c["strategy"], c["metric"]): c["outcome"] for c in comparisons}
    assert outcomes[("curriculum", "accuracy")] == "hurt"
    assert outcomes[("augmented", "accuracy")] == "untestable"
    assert fold_verdict(comparisons, "curriculum").startswith("curriculum over fold models: worse")
    assert fold_verdict(comparisons, "augmented") == "augmented: no testable paired fold metrics"


def minimal_summary(comparisons: list[dict], skipped: list[str]) -> dict:
    return {
        "comparisons": comparisons,
        "strategies": {},
        "skipped": skipped,
        "outputs": ["comparison_report.txt"],
    }


def test_report_states_verdict_p_values_and_fold_caveats(metrics_dir: Path) -> None:
    skipped: list[str] = []
    comparisons = compare_strategies(load_results(metrics_dir, skipped), skipped)
    text = render_report(minimal_summary(comparisons, skipped))
    augmented = next(c for c in comparisons if c["strategy"] == "augmented" and c["metric"] == "accuracy")
    assert "- augmented over fold models: better than the baseline" in text
    assert "- curriculum over fold models: no significant difference" in text
    # without per-image predictions there is no verdict, and the report says why
    assert "- cannot tell whether augmented helped: no per-image hold-out predictions" in text
    assert "augmented vs baseline, accuracy (5 paired fold model(s)" in text
    assert f"paired t-test p = {augmented['t_test_p']:.3g}" in text
    assert "mean difference +0.049" in text
    assert "augmented IMPROVED accuracy by 0.049, significantly" in text
    # with 5 folds the Wilcoxon test cannot reach 0.05: the report says so
    assert "the Wilcoxon test cannot go below p = 0.0625" in text
    assert "Memorization check (privacy)\n----------------------------\nnot run" in text


def test_too_few_folds_are_said_plainly(tmp_path: Path) -> None:
    write_strategy(tmp_path, "baseline", [0.8], [0.85])
    write_strategy(tmp_path, "augmented", [0.9], [0.95])
    write_strategy(tmp_path, "curriculum", [0.8, 0.81, 0.79], [0.85, 0.86, 0.84])
    skipped: list[str] = []
    comparisons = compare_strategies(load_results(tmp_path, skipped), skipped)
    # the curriculum's 3 folds cannot be paired with the baseline's single fold
    assert any("curriculum has fold models [1, 2, 3]" in line for line in skipped)
    assert {c["strategy"] for c in comparisons} == {"augmented"}
    assert all(c["outcome"] == "untestable" for c in comparisons)
    text = render_report(minimal_summary(comparisons, skipped))
    assert "too few folds to test anything" in text
    assert "augmented: no testable paired fold metrics" in text

    write_strategy(tmp_path, "baseline", [0.8, 0.82, 0.78], [0.85, 0.86, 0.84])
    skipped = []
    comparisons = compare_strategies(load_results(tmp_path, skipped), skipped)
    text = render_report(minimal_summary(comparisons, skipped))
    assert "caution: only 3 folds" in text


def test_missing_files_are_skipped_with_a_line_each(tmp_path: Path) -> None:
    write_strategy(tmp_path, "baseline", BASELINE_ACC, BASELINE_AUROC)
    (tmp_path / "baseline_training_history.json").unlink()
    skipped: list[str] = []
    results = load_results(tmp_path, skipped)
    assert set(results) == {"baseline"} and results["baseline"].history is None
    assert len(skipped) == 10  # baseline's history and the three other strategies' three files
    assert any("augmented_final_metrics.json not found" in line for line in skipped)
    assert compare_strategies(results, skipped) == []
    assert "significance tests: no per-fold hold-out metrics for augmented" in skipped
    text = render_report(minimal_summary([], skipped))
    assert "skipped: significance tests: no per-fold hold-out metrics for curriculum" in text
    assert "none could be run" in text


def test_malformed_metrics_file_is_an_error_naming_it(metrics_dir: Path) -> None:
    (metrics_dir / "augmented_cv_summary.json").write_text("{not json")
    with pytest.raises(DatasetError, match="augmented_cv_summary.json"):
        load_results(metrics_dir, [])


def test_mean_over_folds_averages_the_folds_that_reached_each_epoch() -> None:
    history = {
        "folds": [
            {"fold": 1, "epochs": [{"epoch": 0, "val_loss": 1.0}, {"epoch": 1, "val_loss": 0.5}]},
            {"fold": 2, "epochs": [{"epoch": 0, "val_loss": 3.0}]},  # stopped early
        ]
    }
    assert mean_over_folds(history, "val_loss") == ([0, 1], [2.0, 0.5])
    assert mean_over_folds(history, "train_loss") == ([], [])
