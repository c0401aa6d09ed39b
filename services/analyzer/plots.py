"""The analysis figures. Each function draws one PNG and writes it atomically (matplotlib's Figure, no pyplot state)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from services.analyzer.report import CV_METRICS, mean_over_folds
from shared.figures import save_figure

STRATEGY_COLOURS = {"baseline": "tab:blue", "augmented": "tab:orange", "curriculum": "tab:green"}


def plot_training_curves(histories: dict[str, dict[str, Any]], keys: Sequence[str], ylabel: str, path: Path) -> None:
    """One panel per history key (e.g. train_loss | val_loss), one line per strategy: the mean over folds per epoch.

    The trainer numbers epochs from 0; the x axis shows them from 1.
    """
    fig = Figure(figsize=(5.5 * len(keys), 4))
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    for ax, key in zip(axes, keys, strict=True):
        for strategy, history in histories.items():
            epochs, means = mean_over_folds(history, key)
            if epochs:
                ax.plot(np.asarray(epochs) + 1, means, "o-", color=STRATEGY_COLOURS.get(strategy), label=strategy)
        ax.set(title=f"{key.replace('_', ' ')} (mean over folds)", xlabel="epoch", ylabel=ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    save_figure(fig, path)


def plot_cv_comparison(summaries: dict[str, dict[str, Any]], path: Path) -> None:
    """Grouped bars: each strategy's mean validation metric over folds, with its 95% CI as error bars."""
    fig = Figure(figsize=(11, 4.5))
    ax = fig.subplots()
    width = 0.8 / max(len(summaries), 1)
    x = np.arange(len(CV_METRICS))
    for i, (strategy, summary) in enumerate(summaries.items()):
        means = np.array([np.nan if summary["average"].get(m) is None else summary["average"][m] for m in CV_METRICS])
        errors = np.zeros((2, len(CV_METRICS)))
        for j, metric in enumerate(CV_METRICS):
            ci = (summary.get("ci95") or {}).get(metric)
            if ci is not None:
                errors[:, j] = [means[j] - ci[0], ci[1] - means[j]]
        ax.bar(
            x + (i - (len(summaries) - 1) / 2) * width,
            means,
            width,
            yerr=errors,
            capsize=3,
            color=STRATEGY_COLOURS.get(strategy),
            label=strategy,
        )
    ax.set_xticks(x, CV_METRICS)
    ax.set(ylim=(0, 1.05), ylabel="mean over folds (95% CI)", title="Cross-validation metrics by strategy")
    ax.legend(loc="lower right")
    save_figure(fig, path)


def plot_ssim_distribution(synthetic_vs_real: Sequence[float], real_vs_real: Sequence[float], path: Path) -> None:
    """Histograms of each synthetic image's mean SSIM to the real images, beside real images' SSIM to each other."""
    fig = Figure(figsize=(11, 4))
    ax_synth, ax_real = fig.subplots(1, 2, sharex=True)
    everything = [*synthetic_vs_real, *real_vs_real]
    bins = np.linspace(min(everything), max(everything), 30)
    for ax, values, title, colour in (
        (ax_synth, synthetic_vs_real, f"synthetic vs real ({len(synthetic_vs_real)} synthetic)", "tab:orange"),
        (ax_real, real_vs_real, f"real vs real, reference ({len(real_vs_real)} real)", "tab:blue"),
    ):
        ax.hist(values, bins=bins, color=colour, alpha=0.8)
        ax.axvline(float(np.mean(values)), color="k", linestyle="--", label=f"mean {np.mean(values):.3f}")
        ax.set(title=title, xlabel="mean SSIM to the real images", ylabel="images")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
    save_figure(fig, path)


def plot_image_pairs(pairs: Sequence[tuple[np.ndarray, np.ndarray, str]], path: Path) -> None:
    """Columns of (synthetic above, its nearest real image below), each titled."""
    fig = Figure(figsize=(1.8 * len(pairs), 4))
    axes = fig.subplots(2, len(pairs), squeeze=False)
    for column, (synthetic, real, title) in enumerate(pairs):
        for row, (image, label) in enumerate(((synthetic, f"synthetic\n{title}"), (real, "nearest real"))):
            ax = axes[row, column]
            ax.imshow(image, cmap="gray", vmin=0, vmax=255)
            ax.set_title(label, fontsize=8)
            ax.axis("off")
    save_figure(fig, path)


def plot_gradcam_grid(rows: Sequence[tuple[str, Sequence[tuple[np.ndarray, np.ndarray, str]]]], path: Path) -> None:
    """One row per model: each sample's image (values in [0, 1]) with its Grad-CAM heat map over it, titled."""
    n_columns = max(len(samples) for _, samples in rows)
    fig = Figure(figsize=(2.2 * n_columns, 2.5 * len(rows)))
    axes = fig.subplots(len(rows), n_columns, squeeze=False)
    for r, (model_name, samples) in enumerate(rows):
        for c, ax in enumerate(axes[r]):
            ax.axis("off")
            if c >= len(samples):
                continue
            image, cam, title = samples[c]
            ax.imshow(image, cmap="gray", vmin=0, vmax=1)
            ax.imshow(cam, cmap="jet", alpha=0.4, vmin=0, vmax=1)
            ax.set_title(f"{model_name}\n{title}" if c == 0 else title, fontsize=8)
    fig.suptitle("Grad-CAM for the pneumonia output (last conv layer)")
    save_figure(fig, path)
