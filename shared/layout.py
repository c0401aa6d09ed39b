"""Output file names and folders of the steps, in one place: the steps that write them and the drivers that read
them use these names."""

from __future__ import annotations

from pathlib import Path

# train-gan: MODEL_DIR/gan/...
GAN_DIR = "gan"
GAN_CHECKPOINT = "checkpoint_last.pth"  # every epoch: what --resume continues from
GENERATOR_FINAL = "generator_final.pth"
DISCRIMINATOR_FINAL = "discriminator_final.pth"
# train-gan: RESULTS_DIR/, FIGURES_DIR/, OUTPUT_DIR/
GAN_HISTORY = "gan_training_history.json"
GAN_LOSS_FIGURE = "gan_loss_curve.png"
GAN_DIVERSITY_FIGURE = "gan_diversity.png"
GAN_COMPARISON_FIGURE = "gan_real_vs_synthetic.png"
GAN_SAMPLES_DIR = "gan_images"

# analyze-results: ANALYSIS_DIR/
COMPARISON_REPORT = "comparison_report.txt"
ANALYSIS_SUMMARY = "analysis_summary.json"
DATASET_CARD = "dataset_card.md"  # shared.cards: the data the models were trained and measured on
MODEL_CARDS_DIR = "model_cards"  # <strategy>.md: each strategy's served model (shared.cards)
# In a served model archive (.mar) or beside a served model: the MLflow registry version it is, {"name", "version",
# "uri"} (pipeline.tracking); the serving runtimes put it in every answer.
REGISTRY_FILE = "registry.json"


def gan_dir(model_dir: str | Path) -> Path:
    return Path(model_dir) / GAN_DIR


def generator_path(model_dir: str | Path) -> Path:
    """train-gan's final generator (generate-synthetic's --model-path)."""
    return gan_dir(model_dir) / GENERATOR_FINAL


def gan_samples_path(output_dir: str | Path, epoch: int) -> Path:
    return Path(output_dir) / GAN_SAMPLES_DIR / f"epoch_{epoch:03d}.png"


# train-classifier: RESULTS_DIR/
def training_history_name(strategy: str) -> str:
    return f"{strategy}_training_history.json"


def cv_summary_name(strategy: str) -> str:
    return f"{strategy}_cv_summary.json"


def final_metrics_name(strategy: str) -> str:
    return f"{strategy}_final_metrics.json"


REPEAT_DIR_PREFIX = "repeat-"


def repeat_dir_name(repeat: int) -> str:
    """The subfolder of a classifier run's model, metrics and figures folders that holds repeat `repeat` (> 0) of
    the experiment's comparison (train-classifier --repeat); repeat 0 writes into the folders themselves."""
    return f"{REPEAT_DIR_PREFIX}{repeat}"


def holdout_predictions_name(strategy: str) -> str:
    """Per hold-out image: label, each fold model's and the fold-ensemble's probability and decision
    (shared.predictions)."""
    return f"{strategy}_holdout_predictions.csv"


def shifted_predictions_name(strategy: str) -> str:
    """Per MedMNIST-C shift of the hold-out and image: as the hold-out predictions, and each fold model's gate
    refusal (shared.predictions, services.trainer.classification.shift)."""
    return f"{strategy}_shifted_predictions.csv"


# train-classifier: FIGURES_DIR/
def training_curves_name(strategy: str) -> str:
    return f"{strategy}_training_curves.png"


def synthetic_ratio_name(strategy: str) -> str:
    return f"{strategy}_synthetic_ratio.png"


def cv_metrics_name(strategy: str) -> str:
    return f"{strategy}_cv_metrics.png"


def reliability_name(strategy: str) -> str:
    return f"{strategy}_reliability.png"


# train-classifier: MODEL_DIR/
def strategy_model_name(strategy: str, arch: str) -> str:
    """The strategy's selected model (what analyze-results and the model archive read)."""
    return f"{strategy}_{arch}.pth"


def fold_model_name(fold: int, strategy: str, arch: str) -> str:
    return f"fold_{fold}_{strategy}_{arch}.pth"


def training_state_name(strategy: str, arch: str, fold: int | None = None) -> str:
    """The run's resumable state; a single-fold run (--fold-index) has its own per fold."""
    if fold is not None:
        return f"fold_{fold}_{strategy}_{arch}_training_state.pth"
    return f"{strategy}_{arch}_training_state.pth"
