"""A strategy's results: the metrics files and figures of its fold models and served model, and the summary table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from services.trainer.classification.operating_point import decision_metrics, pooled_validation_predictions
from services.trainer.classification.plots import (
    plot_cv_metrics,
    plot_holdout_reliability,
    plot_synthetic_ratio,
    plot_training_curves,
)
from services.trainer.classification.shift import fold_shift_scores
from services.trainer.classification.state import (
    run_config,
)
from shared import layout
from shared.calibration import choose_threshold
from shared.configs import ClassifierTrainingConfig
from shared.curriculum import Schedule
from shared.datasets import LabelledImages
from shared.images import atomic_write_json
from shared.metrics import COMMON_SENSITIVITY, binary_metrics, summarize_folds
from shared.operating_rule import OperatingRule
from shared.predictions import write_holdout_predictions, write_shifted_predictions


def write_strategy_results(
    options: ClassifierTrainingConfig,
    strategy: str,
    schedule: Schedule | None,
    folds_done: list[dict[str, Any]],
    develop: LabelledImages,
    holdout: LabelledImages,
    pool: LabelledImages | None,
    served: dict[str, Any],
    operating_point: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the metrics and figures of the strategy whose served model final_model.final_model wrote (`served`: its
    record); return the final metrics. `operating_point`: apply_operating_point's summary (the fold checkpoints
    already carry its threshold)."""
    model_dir, results_dir, figures_dir = Path(options.model_dir), Path(options.results_dir), Path(options.figures_dir)
    fold_histories = [{"fold": r["fold"], "epochs": r["history"]} for r in folds_done]
    val_per_fold = [{"fold": r["fold"], **r["val_metrics"]} for r in folds_done]
    holdout_per_fold = [{"fold": r["fold"], **r["holdout_metrics"]} for r in folds_done]
    operating_per_fold = [{"fold": r["fold"], **r["holdout_operating_point"]} for r in folds_done]
    model_path = model_dir / layout.strategy_model_name(strategy, options.arch)
    cv_summary = {"strategy": strategy, "folds": val_per_fold, **summarize_folds(val_per_fold)}
    final = {
        "strategy": strategy,
        "model": str(model_path),
        # What is served: the fold-ensemble (every fold model) or one fold model, and its own scores below
        "final_model": {key: served[key] for key in ("kind", "description", "folds")},
        "selected_fold": served["folds"][0] if served["kind"] == "best-fold" else None,
        "holdout": served["holdout"],  # the served model's, at 0.5
        "holdout_per_fold": holdout_per_fold,
        "holdout_summary": summarize_folds(holdout_per_fold),
        # At the calibrated threshold (--operating-point: pooled out-of-fold validation predictions, or each fold's
        # own validation fold), with ECE before and after; "holdout*" above: at 0.5.
        "holdout_operating_point": served["holdout_operating_point"],
        "holdout_operating_point_per_fold": operating_per_fold,
        "holdout_operating_point_summary": summarize_folds(operating_per_fold),
        "calibration": served["calibration"],
        "operating_rule": options.operating_rule,
        "operating_point": (
            None
            if operating_point is None
            else {
                **operating_point,
                "served": {
                    "threshold": served["calibration"]["threshold"],
                    "holdout_at_0.5": decision_metrics(served["holdout"]),
                    "holdout_at_threshold": decision_metrics(served["holdout_operating_point"]),
                },
            }
        ),
        # MedMNIST-C corruptions of the hold-out: the fold models' mean metrics per shift beside the clean hold-out's,
        # and the served model's own
        "shifted": shifted_summary(folds_done),
        "served_shifted": served["shifted"],
        # The old rule and the others beside the one in force, each on the same pooled validation predictions, and
        # how each fares on the hold-out and under shift (a rule is chosen for the data it will meet, not the pool)
        "operating_rules": compare_rules(folds_done, options.operating_rule)
        if options.operating_point == "pooled"
        else None,
        "class_balance": options.class_balance,
        # Real images the served model learned from: one training fold's, or (the ensemble) all development images
        "n_train_real": served["n_train_real"],
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
    shifts = shifted_folds(folds_done)
    if shifts:
        write_shifted_predictions(
            results_dir / layout.shifted_predictions_name(strategy), holdout.patient_ids, holdout.labels, shifts
        )
    plot_training_curves(strategy, fold_histories, figures_dir / layout.training_curves_name(strategy))
    if schedule is not None:
        plot_synthetic_ratio(strategy, fold_histories, schedule, figures_dir / layout.synthetic_ratio_name(strategy))
    plot_cv_metrics(strategy, val_per_fold, cv_summary, figures_dir / layout.cv_metrics_name(strategy))
    plot_holdout_reliability(strategy, folds_done, figures_dir / layout.reliability_name(strategy))
    return final


def shifted_summary(folds_done: list[dict[str, Any]]) -> dict[str, Any] | None:
    """{"holdout": the clean hold-out, "shifts": {shift: ...}}: shift_metrics averaged over the fold models, each at
    its threshold; None when the folds were not scored under shift (--shift-severities none, or older records)."""
    if not scored_under_shift(folds_done):
        return None

    def mean_over_folds(per_fold: list[dict[str, Any]]) -> dict[str, Any]:
        return summarize_folds([{"fold": i, **m} for i, m in enumerate(per_fold)])["average"]

    per_fold = [fold_shift_scores(record) for record in folds_done]
    holdout = [scores["holdout"] for scores in per_fold]
    shifts = {
        shift: mean_over_folds([scores["shifts"][shift] for scores in per_fold]) for shift in per_fold[0]["shifts"]
    }
    return {"common_sensitivity": COMMON_SENSITIVITY, "holdout": mean_over_folds(holdout), "shifts": shifts}


def scored_under_shift(folds_done: list[dict[str, Any]]) -> bool:
    """Whether every fold model was scored on the shifted hold-out (not with --shift-severities none, nor older)."""
    return all(record.get("shifted_probabilities") for record in folds_done)


COMPARED_RULES = ("prevalence", "sensitivity:0.95", "youden")


def compare_rules(folds_done: list[dict[str, Any]], in_force: str) -> dict[str, Any]:
    """Per operating rule (COMPARED_RULES and the one in force): its pooled threshold, the validation sensitivity and
    specificity it was chosen with, and the fold models' mean accuracy, sensitivity and specificity at it on the
    hold-out and, where scored, averaged over the shifts and at the worst shift."""
    probabilities, labels = pooled_validation_predictions(folds_done)
    prior = folds_done[0]["calibration"].get("model_prior")
    compared = {}
    for text in dict.fromkeys([in_force, *COMPARED_RULES]):
        threshold, sensitivity, specificity = choose_threshold(probabilities, labels, OperatingRule.parse(text), prior)

        def decisions(sets: list[tuple[Any, list[float]]], threshold: float = threshold) -> dict[str, float]:
            per_set = [binary_metrics(y, p, threshold) for y, p in sets]
            return {name: float(np.mean([m[name] for m in per_set])) for name in DECISION_METRICS}

        holdout = decisions(
            [(r["holdout_probabilities"]["labels"], r["holdout_probabilities"]["calibrated"]) for r in folds_done]
        )
        entry: dict[str, Any] = {
            "threshold": threshold,
            "validation": {"sensitivity": sensitivity, "specificity": specificity},
            "holdout": holdout,
            "in_force": text == in_force,
        }
        if scored_under_shift(folds_done):
            y = folds_done[0]["holdout_probabilities"]["labels"]
            per_shift = {
                shift: decisions([(y, r["shifted_probabilities"][shift]["calibrated"]) for r in folds_done])
                for shift in folds_done[0]["shifted_probabilities"]
            }
            entry["shifted_mean"] = {n: float(np.mean([m[n] for m in per_shift.values()])) for n in DECISION_METRICS}
            worst = min(per_shift, key=lambda shift: per_shift[shift]["accuracy"])
            entry["shifted_worst"] = {"shift": worst, **per_shift[worst]}
        compared[text] = entry
    return compared


DECISION_METRICS = ("accuracy", "sensitivity", "specificity")


def shifted_folds(folds_done: list[dict[str, Any]]) -> dict[str, list[tuple[int, list, float, list]]]:
    """Shift -> per fold model (fold, calibrated probabilities, threshold, gate refusals): for the predictions file."""
    if not scored_under_shift(folds_done):
        return {}
    return {
        shift: [
            (
                r["fold"],
                r["shifted_probabilities"][shift]["calibrated"],
                r["calibration"]["threshold"],
                r["shifted_probabilities"][shift]["refused"],
            )
            for r in folds_done
        ]
        for shift in folds_done[0]["shifted_probabilities"]
    }


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
    """A short table: hold-out metrics of each fold model and of the served model, at 0.5 and at its threshold."""

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
    final_kind = (final.get("final_model") or {}).get("kind", "best-fold")
    selected = "ensemble" if final_kind == "fold-ensemble" else f"selected ({final['selected_fold']})"
    op = final["holdout_operating_point"]
    rows += [row(selected, final["holdout"]), row(selected, op)]
    rows.append(
        f"served model's ECE: {op['ece_uncalibrated']:.3f} plain softmax, {op['ece_calibrated']:.3f} calibrated"
    )
    point = final.get("operating_point")
    if point is not None and point["rule"] == "pooled":
        own = ", ".join(f"{fold['fold_threshold']:.3f}" for fold in point["per_fold"])
        rows.append(
            f"threshold {point['threshold']:.3f} ({point.get('description', point['method'])}) chosen on "
            f"{point['n_pooled']} pooled out-of-fold validation predictions of {len(point['per_fold'])} fold model(s); "
            f"each fold alone: {own}"
        )
    elif point is not None:
        rows.append("thresholds chosen on each fold model's own validation fold")
    for whose, shifted in (("fold models' mean", final.get("shifted")), ("served model", final.get("served_shifted"))):
        if shifted:
            rows.append(f"under shift, {whose}: {shift_sentence(shifted)}")
    for rule, entry in (final.get("operating_rules") or {}).items():
        under_shift = entry.get("shifted_mean")
        shift_text = (
            f"; under shift {under_shift['accuracy']:.3f} / {under_shift['sensitivity']:.3f} / "
            f"{under_shift['specificity']:.3f}"
            if under_shift
            else ""
        )
        held = entry["holdout"]
        rows.append(
            f"rule {rule:<17}{' (in force)' if entry['in_force'] else ' ' * 11} threshold {entry['threshold']:.3f}: "
            f"accuracy / sensitivity / specificity on the hold-out {held['accuracy']:.3f} / "
            f"{held['sensitivity']:.3f} / {held['specificity']:.3f}{shift_text}"
        )
    rows.append(f"model: {final['model']}")
    return "\n".join(rows)


def shift_sentence(shifted: dict[str, Any]) -> str:
    """The mean over the shifted sets of AUROC, accuracy and the gate's refusals, the clean hold-out's in brackets."""
    mean = {
        name: float(np.mean([m[name] for m in shifted["shifts"].values() if m[name] is not None]))
        for name in ("auroc", "accuracy", "accuracy_at_0.5", "refused")
    }
    clean = shifted["holdout"]
    return (
        f"mean of {len(shifted['shifts'])} MedMNIST-C corruptions of the hold-out (clean hold-out in brackets): "
        f"AUROC {mean['auroc']:.3f} [{clean['auroc']:.3f}], accuracy {mean['accuracy']:.3f} [{clean['accuracy']:.3f}] "
        f"at the threshold, {mean['accuracy_at_0.5']:.3f} [{clean['accuracy_at_0.5']:.3f}] at 0.5; the gate refused "
        f"{mean['refused']:.1%} [{clean['refused']:.1%}]"
    )
