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

from services.trainer.train_classifier import predict
from shared.datasets import DATASETS, DatasetSplits, LabelledImages, TorchImageDataset, load_dataset
from shared.errors import ConfigError, DatasetError
from shared.images import atomic_write_json
from shared.metrics import binary_metrics
from shared.models.classifier import classifier_transform, load_classifier
from shared.runtime import select_device
from shared.splits import develop_and_holdout

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="classifier checkpoint (train-classifier's .pth)")
    parser.add_argument("--dataset", choices=DATASETS, default="rsna", help="dataset source")
    parser.add_argument("--data-dir", default="./data/processed", help="dataset location")
    parser.add_argument("--split", choices=("test", "holdout", "all"), default="holdout", help="which labelled images")
    parser.add_argument("--output", default=None, help="also write the metrics to this JSON file")
    parser.add_argument("--batch-size", type=int, default=64, help="mini-batch size")
    parser.add_argument("--threshold", type=float, default=0.5, help="predict pneumonia when P(pneumonia) >= this")
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
    if not 0.0 <= args.threshold <= 1.0:
        raise ConfigError(f"--threshold must be in [0, 1], got {args.threshold}")
    device = select_device(args.cpu)
    model, config = load_classifier(args.model, device)
    transform = classifier_transform(config, train=False)
    images = split_images(load_dataset(args.dataset, args.data_dir), args.split, args.data_dir)
    dataset = ConcatDataset([TorchImageDataset(part, transform) for part in images])
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False, num_workers=args.workers)
    log.info("evaluating %s on %d %s images of %s", args.model, len(dataset), args.split, args.dataset)
    y_true, p_pneumonia, loss = predict(model, loader, device)
    return {
        "model": str(args.model),
        "dataset": args.dataset,
        "data_dir": str(args.data_dir),
        "split": args.split,
        "config": config,
        "loss": loss,
        "metrics": binary_metrics(y_true, p_pneumonia, threshold=args.threshold),
    }


def format_metrics(result: dict[str, Any]) -> str:
    metrics = result["metrics"]
    lines = [f"{result['model']} on {result['dataset']} ({result['split']}, {metrics['n']} images):"]
    for name in ("accuracy", "precision", "recall", "f1", "auroc", "sensitivity", "specificity"):
        value = metrics[name]
        lines.append(f"  {name:<12} {'n/a' if value is None else f'{value:.4f}'}")
    (tn, fp), (fn, tp) = metrics["confusion_matrix"]
    lines.append(f"  confusion    tn {tn}  fp {fp}  fn {fn}  tp {tp}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    result = evaluate_model(args)
    if args.output:
        atomic_write_json(Path(args.output), result)
    print(format_metrics(result))
    return 0
