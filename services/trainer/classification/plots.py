"""The figures of a strategy: training curves, synthetic share, cross-validation metrics, reliability."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from shared.calibration import (
    plot_reliability,
)
from shared.curriculum import Schedule, ratio_at
from shared.figures import save_figure


def plot_training_curves(strategy: str, folds: list[dict[str, Any]], path: Path) -> None:
    """Loss and accuracy per epoch: one colour per fold, solid = training, dashed = validation."""
    fig = Figure(figsize=(11, 4))
    ax_loss, ax_acc = fig.subplots(1, 2)
    for fold in folds:
        epochs = [e["epoch"] + 1 for e in fold["epochs"]]
        (line,) = ax_loss.plot(epochs, [e["train_loss"] for e in fold["epochs"]], label=f"fold {fold['fold']} train")
        ax_loss.plot(
            epochs,
            [e["val_loss"] for e in fold["epochs"]],
            "--",
            color=line.get_color(),
            label=f"fold {fold['fold']} val",
        )
        ax_acc.plot(epochs, [e["train_acc"] for e in fold["epochs"]], color=line.get_color())
        ax_acc.plot(epochs, [e["val_acc"] for e in fold["epochs"]], "--", color=line.get_color())
    ax_loss.set(title=f"{strategy}: loss", xlabel="epoch", ylabel="cross-entropy")
    ax_acc.set(title=f"{strategy}: accuracy", xlabel="epoch", ylabel="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_loss.legend(fontsize="small")
    save_figure(fig, path)


def plot_synthetic_ratio(strategy: str, folds: list[dict[str, Any]], schedule: Schedule, path: Path) -> None:
    """The synthetic share per epoch: scheduled (line) and used (markers; lower when the pool runs out)."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    epochs = [e["epoch"] for e in folds[0]["epochs"]]
    ax.plot(
        [e + 1 for e in epochs], [ratio_at(schedule, e) for e in epochs], "k--", drawstyle="steps-mid", label="schedule"
    )
    for fold in folds:
        used = [e["synthetic_ratio"] for e in fold["epochs"]]
        ax.plot([e + 1 for e in epochs], used, "o", alpha=0.7, label=f"fold {fold['fold']} used")
    ax.set(
        title=f"{strategy}: synthetic share of training samples", xlabel="epoch", ylabel="synthetic ratio", ylim=(0, 1)
    )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize="small")
    save_figure(fig, path)


CV_PLOT_METRICS = ("accuracy", "precision", "recall", "f1", "auroc", "sensitivity", "specificity")


def plot_cv_metrics(strategy: str, fold_metrics: list[dict[str, Any]], summary: dict[str, Any], path: Path) -> None:
    """Validation metrics: mean over folds (bars, 95% CI whiskers) and each fold (dots)."""
    names = [n for n in CV_PLOT_METRICS if summary["average"].get(n) is not None]
    means = [summary["average"][n] for n in names]
    yerr = None
    if len(fold_metrics) > 1:  # 95% CI of the mean as asymmetric whiskers: 2 x metrics
        yerr = np.array(
            [[m - summary["ci95"][n][0], summary["ci95"][n][1] - m] for n, m in zip(names, means, strict=True)]
        ).T
    fig = Figure(figsize=(8, 4))
    ax = fig.subplots()
    ax.bar(names, means, yerr=yerr, capsize=4, color="lightsteelblue")
    for fold in fold_metrics:
        ax.plot(names, [fold[n] if fold[n] is not None else np.nan for n in names], "k.", alpha=0.6)
    ax.set(title=f"{strategy}: validation metrics over {len(fold_metrics)} fold(s)", ylim=(0, 1.05))
    save_figure(fig, path)


def plot_holdout_reliability(strategy: str, folds_done: list[dict[str, Any]], path: Path) -> None:
    """Reliability on the hold-out of every fold model's predictions pooled: plain softmax vs calibrated."""
    labels = np.concatenate([r["holdout_probabilities"]["labels"] for r in folds_done])
    curves = {
        name: (np.concatenate([r["holdout_probabilities"][key] for r in folds_done]), labels)
        for name, key in (("softmax", "uncalibrated"), ("temperature-scaled", "calibrated"))
    }
    plot_reliability(curves, path, title=f"{strategy}: hold-out reliability ({len(folds_done)} fold models)")
