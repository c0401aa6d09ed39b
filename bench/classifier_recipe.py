"""Classifier recipe and final model (issue 23, items 2 and 4): which recipe, and which final model, holds up best
on the hold-out and under MedMNIST-C shift.

Every model is scored on the clean hold-out and on each of the 13 PneumoniaMNIST corruptions of MedMNIST-C at
severity 3 (shared.corruptions, seed 0): AUROC, accuracy / sensitivity / specificity at 0.5, specificity at
sensitivity 0.95. The rows:

- standard-fold-1..3, standard-fold-ensemble: the 3 baseline fold models of a standard-profile run (`--run-models`),
  alone and as the mean of their softmax P(pneumonia). Fold 1 is the run's best fold.
- refit-standard: one model trained on every development image with the standard profile's recipe, through the
  trainer's own functions (ClassifierTrainingConfig of the standard profile, class_weights, training_loader,
  train_one_epoch): ResNet-18 with the max-pool stem, batch 64, AdamW (decay 0.01) + OneCycleLR (max lr 3e-3),
  10 epochs, class-weighted cross-entropy, the light affine augmentation (the standard profile's until this
  bench chose `--augmentation strong`), fp32.
- refit-ema: the exponential moving average (decay 0.99 per step, BatchNorm buffers averaged too) of the weights of
  refit-standard's own training run (one run, two models). 0.99, not 0.999: 10 epochs are only 660 steps.
- refit-no-stem-pool: stem_pool=False (28 x 28 maps after the stem).
- refit-strong-aug: `--augmentation strong` (shared.models.classifier.classifier_transform): the affine without its
  zoom, then RandomResizedCrop(28, scale 0.75-1, ratio 0.9-1.1), brightness and contrast x0.8-1.2, gamma 0.8-1.25
  (half the images), Gaussian noise sigma 0-0.04 (half the images, [0, 1] intensities): milder than severity 3, but
  the same families as seven of the 13 test sets.
- refit-20-epochs: the standard recipe for 20 epochs.
- <ensemble>+tta, <best refit>+tta: the mean P(pneumonia) over the identity and the four +-1 px translations (no
  flips: chest X-rays are not left-right symmetric). The best refit is the one with the highest mean shifted AUROC.

Trained models go to --model-dir (/tmp/recipe-models); with --reuse a rerun loads those already there.

    cd /work/main && .venv/bin/python bench/classifier_recipe.py --reuse --out /tmp/classifier_recipe.json

On 2 cores shared with another busy process, 2 threads train ~10x slower than 1 (OpenMP threads waiting on each
other: 20 against 200 images/s, measured), so pass --threads 1 there.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from pipeline.profiles import PROFILES
from services.trainer.classification.data import class_weights, subsample, training_loader
from shared.calibration import pneumonia_probability
from shared.configs import ClassifierTrainingConfig
from shared.corruptions import CORRUPTIONS, CorruptedImages
from shared.datasets import LabelledImages, load_dataset
from shared.distributed import ONE_PROCESS
from shared.metrics import COMMON_SENSITIVITY, binary_metrics, specificity_at_sensitivity
from shared.models.classifier import (
    build_classifier,
    classifier_config,
    classifier_transform,
    load_classifier,
    save_classifier,
)
from shared.runtime import seed_everything
from shared.splits import develop_and_holdout
from shared.training.loop import train_one_epoch

# name -> (options changed from the standard profile's classifier options, augmentation, track an EMA)
RECIPES: dict[str, tuple[dict[str, Any], str, bool]] = {
    "refit-standard": ({}, "light", True),
    "refit-no-stem-pool": ({"stem_pool": False}, "light", False),
    "refit-strong-aug": ({}, "strong", False),
    "refit-20-epochs": ({"epochs": 20}, "light", False),
}
EMA_DECAY = 0.99
TTA_SHIFTS = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))  # (dy, dx) in pixels
SEVERITY = 3


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data/pneumoniamnist"))
    parser.add_argument(
        "--run-models",
        type=Path,
        default=Path("/tmp/runs-standard-20261207/storage/models/runs/20261207-191243-standard/classifiers"),
    )
    parser.add_argument("--model-dir", type=Path, default=Path("/tmp/recipe-models"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/classifier_recipe.json"))
    parser.add_argument("--variants", default=",".join(RECIPES), help=f"comma list of {', '.join(RECIPES)}")
    parser.add_argument(
        "--threads", type=int, default=2, help="torch threads; 1 where another process shares the CPU (10x faster)"
    )
    parser.add_argument("--reuse", action="store_true", help="load trained models found in --model-dir")
    parser.add_argument("--max-train", type=int, default=None, help="debug: a stratified subset of develop")
    parser.add_argument("--max-eval", type=int, default=None, help="debug: a stratified subset of the hold-out")
    parser.add_argument("--epochs", type=int, default=None, help="debug: every recipe's epochs")
    return parser


def train_one_model(
    name: str, develop: LabelledImages, model_dir: Path, epochs: int | None
) -> dict[str, tuple[nn.Module, dict[str, Any]]]:
    """Train recipe `name` on `develop` as the trainer trains a fold (seed 0) and save it (and its EMA) under
    `model_dir`; {row name: (model in eval mode, config with the training record under "recipe")}."""
    changes, augmentation, track_ema = RECIPES[name]
    options = ClassifierTrainingConfig(**{**PROFILES["standard"].classifier, **changes})
    epochs = epochs or options.epochs
    seed_everything(options.seed)
    device = torch.device("cpu")
    model = build_classifier(
        options.arch, 2, options.channels, options.image_size, options.weights, stem_pool=options.stem_pool
    )
    config = classifier_config(
        options.arch, options.channels, options.image_size, "baseline", options.weights, stem_pool=options.stem_pool
    )
    weights = class_weights(develop.labels)
    criterion = nn.CrossEntropyLoss(weight=weights)
    optimizer = torch.optim.AdamW(model.parameters(), lr=options.lr)  # weight_decay unset: AdamW's 0.01
    steps = epochs * math.ceil(len(develop) / options.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=options.lr, total_steps=steps)
    ema = None
    if track_ema:
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(EMA_DECAY), use_buffers=True)
        optimizer.register_step_post_hook(lambda *_: ema.update_parameters(model))
    transform = classifier_transform({**config, "augmentation": augmentation}, train=True)
    history, started = [], time.perf_counter()
    for epoch in range(epochs):
        loader = training_loader(develop, None, transform, options, weights, ONE_PROCESS, options.seed, epoch)
        epoch_start = time.perf_counter()
        desc = f"{name} epoch {epoch + 1}/{epochs}"
        loss, acc = train_one_epoch(model, loader, criterion, optimizer, scheduler, device, desc)
        seconds = time.perf_counter() - epoch_start
        history.append({"epoch": epoch, "train_loss": loss, "train_acc": acc, "seconds": seconds})
        print(f"{desc}: loss {loss:.4f} acc {acc:.3f} ({seconds:.0f} s)", flush=True)
    seconds = time.perf_counter() - started
    record = {
        "train_seconds": seconds,
        "images_per_second": epochs * len(develop) / seconds,
        "epochs": epochs,
        "n_train": len(develop),
        "history": history,
    }
    trained = {name: (model, {**config, "recipe": record})}
    if ema is not None:
        trained["refit-ema"] = (ema.module, {**config, "recipe": {**record, "ema_decay": EMA_DECAY}})
    for row, (row_model, row_config) in trained.items():
        save_classifier(model_dir / f"{row}.pth", row_model, row_config)
        row_model.eval()
    return trained


def evaluation_sets(holdout: LabelledImages, config: dict[str, Any]) -> dict[str, tuple[torch.Tensor, np.ndarray]]:
    """{set name: (N x C x S x S preprocessed images, labels)}: the hold-out and its 13 corruptions at SEVERITY."""
    transform = classifier_transform(config, train=False)
    sources = {"holdout": holdout} | {
        f"{name}@{SEVERITY}": CorruptedImages(holdout, name, SEVERITY, seed=0) for name in CORRUPTIONS
    }
    sets = {}
    for set_name, images in tqdm(sources.items(), desc="evaluation sets"):
        sets[set_name] = (torch.stack([transform(images.load(i)) for i in range(len(images))]), images.labels)
    return sets


def shifted(batch: torch.Tensor, dy: int, dx: int, fill: torch.Tensor) -> torch.Tensor:
    """`batch` translated by (dy, dx) pixels, the uncovered border filled with `fill` (per channel)."""
    if dy == dx == 0:
        return batch
    pad = max(abs(dy), abs(dx))
    padded = F.pad(batch - fill, (pad, pad, pad, pad)) + fill  # black in pixel space, as RandomAffine's fill
    h, w = batch.shape[-2:]
    return padded[..., pad - dy : pad - dy + h, pad - dx : pad - dx + w]


@torch.inference_mode()
def predict_probabilities(
    model: nn.Module, images: torch.Tensor, config: dict[str, Any], shifts: tuple = ((0, 0),), batch: int = 512
) -> np.ndarray:
    """Softmax P(pneumonia) of `model` on preprocessed `images`, averaged over the translations `shifts`."""
    model.eval()
    fill = (0 - torch.tensor(config["mean"])) / torch.tensor(config["std"])
    fill = fill.view(1, -1, 1, 1)
    total = np.zeros(len(images))
    for dy, dx in shifts:
        logits = [
            model(shifted(images[i : i + batch], dy, dx, fill)).double().numpy() for i in range(0, len(images), batch)
        ]
        total += pneumonia_probability(np.concatenate(logits))
    return total / len(shifts)


def score_sets(labels: dict[str, np.ndarray], probabilities: dict[str, np.ndarray]) -> dict[str, Any]:
    """Per set: binary_metrics at 0.5 plus spec_at_sens95; and the summary the table prints."""
    sets = {}
    for name, p in probabilities.items():
        metrics = binary_metrics(labels[name], p)
        metrics["spec_at_sens95"] = specificity_at_sensitivity(labels[name], p, COMMON_SENSITIVITY)
        sets[name] = metrics
    shifts = [name for name in sets if name != "holdout"]
    mean = {
        key: float(np.mean([sets[s][key] for s in shifts]))
        for key in ("auroc", "accuracy", "sensitivity", "specificity", "spec_at_sens95")
    }
    worst = min(shifts, key=lambda s: sets[s]["auroc"])
    hold = sets["holdout"]
    summary = {
        "holdout": {k: hold[k] for k in mean},
        "mean_shift": mean,
        "worst_shift": {"name": worst, "auroc": sets[worst]["auroc"]},
    }
    return {"summary": summary, "sets": sets}


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(variants) - set(RECIPES)
    if unknown:
        raise SystemExit(f"unknown --variants {sorted(unknown)}; known: {', '.join(RECIPES)}")
    develop, holdout = develop_and_holdout(load_dataset("pneumoniamnist", args.data_dir))
    if args.max_train:
        develop = subsample(develop, args.max_train, seed=0)
    if args.max_eval:
        holdout = subsample(holdout, args.max_eval, seed=0)
    print(
        f"develop {len(develop)} images, hold-out {len(holdout)}; {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}",
        flush=True,
    )
    started = time.perf_counter()
    folds = {
        f"standard-fold-{k}": load_classifier(args.run_models / f"fold_{k}_baseline_resnet18.pth") for k in (1, 2, 3)
    }
    config = folds["standard-fold-1"][1]
    sets = evaluation_sets(holdout, config)
    labels = {name: y for name, (_, y) in sets.items()}
    results: dict[str, Any] = {}
    cache: dict[tuple[str, tuple[int, int]], dict[str, np.ndarray]] = {}  # (model, shift) -> {set: P(pneumonia)}

    def score(row: str, members: dict[str, tuple[nn.Module, dict[str, Any]]], shifts: tuple = ((0, 0),)) -> None:
        """Score the mean P(pneumonia) of `members` over `shifts` on every set as row `row`."""
        t0 = time.perf_counter()
        for key, (model, row_config) in members.items():
            assert all(row_config[k] == config[k] for k in ("image_size", "in_channels", "mean", "std"))
            for shift in shifts:
                if (key, shift) not in cache:
                    cache[key, shift] = {
                        name: predict_probabilities(model, x, row_config, (shift,))
                        for name, (x, _) in tqdm(sets.items(), desc=f"{key} {shift}", leave=False)
                    }
        probs = {
            name: np.mean([cache[key, shift][name] for key in members for shift in shifts], axis=0) for name in sets
        }
        results[row] = score_sets(labels, probs)
        results[row]["score_seconds"] = time.perf_counter() - t0
        s, took = results[row]["summary"], results[row]["score_seconds"]
        print(
            f"{row}: hold-out AUROC {s['holdout']['auroc']:.4f}, mean shift AUROC {s['mean_shift']['auroc']:.4f}, "
            f"worst {s['worst_shift']['name']} {s['worst_shift']['auroc']:.4f} ({took:.0f} s)",
            flush=True,
        )

    for row, model in folds.items():
        score(row, {row: model})
    score("standard-fold-ensemble", folds)
    score("standard-fold-ensemble+tta", folds, TTA_SHIFTS)
    args.model_dir.mkdir(parents=True, exist_ok=True)
    refits: list[str] = []
    for name in variants:
        rows = [name, "refit-ema"] if RECIPES[name][2] else [name]
        paths = [args.model_dir / f"{row}.pth" for row in rows]
        if args.reuse and all(p.is_file() for p in paths):
            trained = {row: load_classifier(p) for row, p in zip(rows, paths, strict=True)}
            print(f"{name}: reused {', '.join(map(str, paths))}", flush=True)
        else:
            trained = train_one_model(name, develop, args.model_dir, args.epochs)
        for row, (model, row_config) in trained.items():
            score(row, {row: (model, row_config)})
            results[row]["training"] = row_config["recipe"]
            refits.append(row)
    if refits:
        best = max(refits, key=lambda r: results[r]["summary"]["mean_shift"]["auroc"])
        score(f"{best}+tta", {best: load_classifier(args.model_dir / f"{best}.pth")}, TTA_SHIFTS)
    wall = time.perf_counter() - started
    print_table(results)
    print(f"\nwall time {wall:.0f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "n_develop": len(develop),
                "n_holdout": len(holdout),
                "severity": SEVERITY,
                "wall_seconds": wall,
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "rows": results,
            },
            indent=1,
        )
    )
    print(f"wrote {args.out}")


def print_table(results: dict[str, Any]) -> None:
    """The markdown table: hold-out and mean-over-shifts AUROC / accuracy / spec@sens0.95, worst shift's AUROC."""
    print(
        "\n| model | hold-out AUROC | acc | spec@sens0.95 | mean-shift AUROC | acc | spec@sens0.95 | worst shift "
        "AUROC | train s (img/s) |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    for row, result in results.items():
        h, m, w = (result["summary"][k] for k in ("holdout", "mean_shift", "worst_shift"))
        training = result.get("training")
        train = f"{training['train_seconds']:.0f} ({training['images_per_second']:.0f})" if training else "-"
        print(
            f"| {row} | {h['auroc']:.4f} | {h['accuracy']:.3f} | {h['spec_at_sens95']:.3f} | {m['auroc']:.4f} | "
            f"{m['accuracy']:.3f} | {m['spec_at_sens95']:.3f} | {w['auroc']:.4f} ({w['name']}) | {train} |"
        )


if __name__ == "__main__":
    main(get_args_parser().parse_args())
