"""A strategy's results: the selected model, the metrics files and figures, and the summary table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from services.trainer.classification.plots import (
    plot_cv_metrics,
    plot_holdout_reliability,
    plot_synthetic_ratio,
    plot_training_curves,
)
from services.trainer.classification.state import (
    fold_model_path,
    run_config,
)
from shared import layout
from shared.configs import ClassifierTrainingConfig
from shared.curriculum import Schedule
from shared.datasets import LabelledImages
from shared.images import atomic_write_bytes, atomic_write_json
from shared.metrics import summarize_folds
from shared.predictions import write_holdout_predictions


def write_strategy_results(
    options: ClassifierTrainingConfig,
    strategy: str,
    schedule: Schedule | None,
    folds_done: list[dict[str, Any]],
    develop: LabelledImages,
    holdout: LabelledImages,
    pool: LabelledImages | None,
    operating_point: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Select the strategy's model among the fold models; write the metrics and figures; return the final metrics.
    `operating_point`: apply_operating_point's summary (the fold checkpoints already carry its threshold)."""
    model_dir, results_dir, figures_dir = Path(options.model_dir), Path(options.results_dir), Path(options.figures_dir)
    fold_histories = [{"fold": r["fold"], "epochs": r["history"]} for r in folds_done]
    val_per_fold = [{"fold": r["fold"], **r["val_metrics"]} for r in folds_done]
    holdout_per_fold = [{"fold": r["fold"], **r["holdout_metrics"]} for r in folds_done]
    operating_per_fold = [{"fold": r["fold"], **r["holdout_operating_point"]} for r in folds_done]
    best: dict[str, Any] = {}
    for record in folds_done:
        auroc = -1.0 if record["val_metrics"]["auroc"] is None else record["val_metrics"]["auroc"]
        if not best or auroc > best["auroc"]:
            best = {"fold": record["fold"], "auroc": auroc, "n_train_real": record["n_train_real"]}

    # The strategy's model is the selected fold model itself: no retraining.
    model_path = model_dir / layout.strategy_model_name(strategy, options.arch)
    atomic_write_bytes(model_path, fold_model_path(model_dir, best["fold"], strategy, options.arch).read_bytes())
    cv_summary = {"strategy": strategy, "folds": val_per_fold, **summarize_folds(val_per_fold)}
    final = {
        "strategy": strategy,
        "model": str(model_path),
        "selected_fold": best["fold"],
        "holdout": holdout_per_fold[best["fold"] - 1],
        "holdout_per_fold": holdout_per_fold,
        "holdout_summary": summarize_folds(holdout_per_fold),
        # At the calibrated threshold each fold model carries (--operating-point: pooled out-of-fold validation
        # predictions, or its own validation fold), with ECE before and after; "holdout*" above: at 0.5.
        "holdout_operating_point": operating_per_fold[best["fold"] - 1],
        "holdout_operating_point_per_fold": operating_per_fold,
        "holdout_operating_point_summary": summarize_folds(operating_per_fold),
        "calibration": folds_done[best["fold"] - 1]["calibration"],
        "target_sensitivity": options.target_sensitivity,
        "operating_point": (
            None
            if operating_point is None
            else {**operating_point, "served": operating_point["per_fold"][best["fold"] - 1]}
        ),
        "class_balance": options.class_balance,
        "n_train_real": best["n_train_real"],
        "n_synthetic_pool": len(pool) if pool is not None else 0,
        "class_mix": pooled_class_mix(folds_done),
        "n_develop": len(develop),
        "n_holdout": len(holdout),
        "dataset": options.dataset,
        "arch": options.arch,
    }
    atomic_write_json(
        results_dir / layout.training_history_name(strategy),
        {"strategy": strategy, "config": run_config(options), "folds": fold_histories},
    )
    atomic_write_json(results_dir / layout.cv_summary_name(strategy), cv_summary)
    atomic_write_json(results_dir / layout.final_metrics_name(strategy), final)
    folds = [(r["fold"], r["holdout_probabilities"]["calibrated"], r["calibration"]["threshold"]) for r in folds_done]
    if any(r["holdout_probabilities"]["labels"] != holdout.labels.tolist() for r in folds_done):
        raise RuntimeError("a fold model's hold-out predictions are not in the hold-out's order")
    write_holdout_predictions(
        results_dir / layout.holdout_predictions_name(strategy), holdout.patient_ids, holdout.labels, folds
    )
    plot_training_curves(strategy, fold_histories, figures_dir / layout.training_curves_name(strategy))
    if schedule is not None:
        plot_synthetic_ratio(strategy, fold_histories, schedule, figures_dir / layout.synthetic_ratio_name(strategy))
    plot_cv_metrics(strategy, val_per_fold, cv_summary, figures_dir / layout.cv_metrics_name(strategy))
    plot_holdout_reliability(strategy, folds_done, figures_dir / layout.reliability_name(strategy))
    return final


def pooled_class_mix(folds_done: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """The training folds' class mix summed over the folds: {"real", "synthetic", "after"} -> {"normal",
    "pneumonia"}; "after" is real + synthetic, an epoch of augmented. Empty for records that predate it."""
    mixes = [record["class_mix"] for record in folds_done if "class_mix" in record]
    if not mixes:
        return {}
    pooled = {
        part: {name: sum(mix[part][name] for mix in mixes) for name in ("normal", "pneumonia")}
        for part in ("real", "synthetic")
    }
    pooled["after"] = {name: pooled["real"][name] + pooled["synthetic"][name] for name in ("normal", "pneumonia")}
    return pooled


def format_summary(final: dict[str, Any]) -> str:
    """A short table: hold-out metrics of each fold model and of the selected model, at 0.5 and at its threshold."""

    def cell(value: float | None) -> str:
        return "   n/a" if value is None else f"{value:6.3f}"

    names = ("accuracy", "auroc", "sensitivity", "specificity", "f1")

    def row(name: str, metrics: dict[str, Any]) -> str:
        return f"{name + ' @ ' + format(metrics['threshold'], '.3f'):<22}" + "".join(
            f"{cell(metrics[n]):>13}" for n in names
        )

    title = f"{final['strategy']} ({final['arch']}, {final['dataset']})"
    rows = [f"{title}: hold-out test metrics at 0.5 and at the calibrated threshold"]
    rows.append(f"{'model @ threshold':<22}" + "".join(f"{n:>13}" for n in names))
    for at_half, operating in zip(final["holdout_per_fold"], final["holdout_operating_point_per_fold"], strict=True):
        rows += [row(f"fold {at_half['fold']}", at_half), row(f"fold {at_half['fold']}", operating)]
    selected = f"selected ({final['selected_fold']})"
    op = final["holdout_operating_point"]
    rows += [row(selected, final["holdout"]), row(selected, op)]
    rows.append(
        f"selected model's ECE: {op['ece_uncalibrated']:.3f} plain softmax, {op['ece_calibrated']:.3f} calibrated"
    )
    point = final.get("operating_point")
    if point is not None and point["rule"] == "pooled":
        own = ", ".join(f"{fold['fold_threshold']:.3f}" for fold in point["per_fold"])
        rows.append(
            f"threshold {point['threshold']:.3f} ({point['method']}) chosen on {point['n_pooled']} pooled out-of-fold "
            f"validation predictions of {len(point['per_fold'])} fold model(s); each fold alone: {own}"
        )
    elif point is not None:
        rows.append("thresholds chosen on each fold model's own validation fold")
    rows.append(f"model: {final['model']}")
    return "\n".join(rows)
