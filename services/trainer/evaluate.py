"""Evaluate a saved classifier on a labelled split of a dataset and print its metrics.

Splits: test = the source's own labelled test split (an error when it has none: an unlabelled test set such as
RSNA's stage 2 is never scored); holdout = the seeded patient-level hold-out that train-classifier also uses;
all = every labelled image (including any the model was trained on).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from torch.utils.data import ConcatDataset, DataLoader

from shared.calibration import (
    Calibration,
    calibrated_probability,
    decision_threshold,
    expected_calibration_error,
    pneumonia_probability,
)
from shared.datasets import DATASETS, DatasetSplits, LabelledImages, TorchImageDataset, load_dataset
from shared.errors import ConfigError, DatasetError
from shared.images import atomic_write_json
from shared.metrics import binary_metrics
from shared.models.classifier import classifier_transform, load_classifier
from shared.runtime import select_device
from shared.splits import develop_and_holdout
from shared.training.loop import predict_logits

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="classifier checkpoint (train-classifier's .pth)")
    parser.add_argument("--dataset", choices=DATASETS, default="rsna", help="dataset source")
    parser.add_argument("--data-dir", default="./data/processed", help="dataset location")
    parser.add_argument("--split", choices=("test", "holdout", "all"), default="holdout", help="which labelled images")
    parser.add_argument("--output", default=None, help="also write the metrics to this JSON file")
    parser.add_argument("--batch-size", type=int, default=64, help="mini-batch size")
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="predict pneumonia when P(pneumonia) >= this (default: the model's calibrated operating point, else 0.5)",
    )
    parser.add_argument(
        "--uncalibrated", action="store_true", help="ignore the model's calibration: plain softmax, threshold 0.5"
    )
    parser.add_argument("--workers", type=int, default=0, help="data loader worker processes")
    parser.add_argument("--cpu", action="store_true", help="force CPU even where CUDA is available")


def split_images(splits: DatasetSplits, split: str, data_dir: str) -> list[LabelledImages]:
    """The labelled image sets that make up `split`."""
    if split == "test":
        if splits.official_test is None or len(splits.official_test) == 0:
            raise DatasetError(
                f"{splits.name} in {data_dir} has no labelled official test split (its test images, if any, have no "
                "ground truth and are never scored); use --split holdout"
            )
        return [splits.official_test]
    if split == "holdout":
        return [develop_and_holdout(splits)[1]]
    if split == "all":
        log.warning("--split all includes images the model may have been trained on: not an unbiased estimate")
        return [images for images in (splits.labelled, splits.official_test) if images is not None and len(images)]
    raise ConfigError(f"--split {split}: choose test, holdout or all")


def evaluate_model(args: argparse.Namespace) -> dict[str, Any]:
    """Load the model, score it on the chosen split, return {"model", "dataset", "data_dir", "split", "config",
    "metrics"}."""
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise ConfigError(f"--threshold must be in [0, 1], got {args.threshold}")
    device = select_device(args.cpu)
    model, config = load_classifier(args.model, device)
    transform = classifier_transform(config, train=False)
    images = split_images(load_dataset(args.dataset, args.data_dir), args.split, args.data_dir)
    dataset = ConcatDataset([TorchImageDataset(part, transform) for part in images])
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False, num_workers=args.workers)
    log.info("evaluating %s on %d %s images of %s", args.model, len(dataset), args.split, args.dataset)
    y_true, logits, loss = predict_logits(model, loader, device)
    calibration = None
    if config.get("calibration") and not args.uncalibrated:
        calibration = Calibration.from_dict(config["calibration"])
    p_pneumonia = calibrated_probability(logits, calibration)
    threshold = args.threshold if args.threshold is not None else decision_threshold(calibration)
    return {
        "model": str(args.model),
        "dataset": args.dataset,
        "data_dir": str(args.data_dir),
        "split": args.split,
        "config": config,
        "loss": loss,
        "calibrated": calibration is not None,
        "metrics": binary_metrics(y_true, p_pneumonia, threshold=threshold),
        "metrics_softmax_at_0.5": binary_metrics(y_true, pneumonia_probability(logits)),
        "ece_softmax": expected_calibration_error(pneumonia_probability(logits), y_true),
        "ece": expected_calibration_error(p_pneumonia, y_true),
    }


def format_metrics(result: dict[str, Any]) -> str:
    metrics = result["metrics"]
    how = "calibrated" if result["calibrated"] else "plain softmax"
    lines = [
        f"{result['model']} on {result['dataset']} ({result['split']}, {metrics['n']} images; {how}, threshold "
        f"{metrics['threshold']:.3f}):"
    ]
    for name in ("accuracy", "precision", "recall", "f1", "auroc", "sensitivity", "specificity"):
        value = metrics[name]
        lines.append(f"  {name:<12} {'n/a' if value is None else f'{value:.4f}'}")
    (tn, fp), (fn, tp) = metrics["confusion_matrix"]
    lines.append(f"  confusion    tn {tn}  fp {fp}  fn {fn}  tp {tp}")
    lines.append(f"  ECE          {result['ece']:.4f} (plain softmax {result['ece_softmax']:.4f})")
    if result["calibrated"]:
        plain = result["metrics_softmax_at_0.5"]
        lines.append(
            f"  at 0.5 without calibration: accuracy {plain['accuracy']:.4f}, sensitivity "
            f"{plain['sensitivity'] or 0:.4f}, specificity {plain['specificity'] or 0:.4f}"
        )
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    result = evaluate_model(args)
    if args.output:
        atomic_write_json(Path(args.output), result)
    print(format_metrics(result))
    return 0
