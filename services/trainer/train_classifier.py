"""Train the pneumonia classifier with one strategy and patient-level cross-validation.

Strategies: baseline (real images only); augmented (--use-synthetic: real + every synthetic image, each epoch);
curriculum (--use-synthetic --use-curriculum: the synthetic share of each epoch's samples follows
--curriculum-schedule). The hold-out test set is fixed first (patient-level, seeded); the rest is split into k
patient-level folds (k = 1: one train/validation split). Synthetic images only ever enter training folds.
Each fold model is evaluated on its validation fold and on the hold-out; the fold model with the best validation
AUROC becomes the strategy's model.

Every epoch writes a resumable training state (MODEL_DIR/<strategy>_<arch>_training_state.pth: model, optimizer,
scheduler and every RNG of the fold in progress, plus the results of the folds already finished); --resume continues
a killed run from it with the same options: finished folds are not retrained, the interrupted fold goes on from its
last epoch, and the final metrics are those an uninterrupted run would have written.

Under torchrun (`torchrun --standalone --nproc-per-node gpu pneumonia train-classifier ...`) each fold trains in
DistributedDataParallel: every process takes its shard of each epoch with --batch-size / processes images per step.
Rank 0 evaluates, calibrates and writes every output while the others wait.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import ConcatDataset, DataLoader, Dataset, WeightedRandomSampler
from tqdm import tqdm

from services.trainer.hooks import Progress, StopCheck, stop_if_asked
from shared.calibration import (
    Calibration,
    CalibrationError,
    calibrated_probability,
    expected_calibration_error,
    fit_calibration,
    plot_reliability,
    pneumonia_probability,
)
from shared.checkpoints import load_checkpoint, save_checkpoint
from shared.curriculum import Schedule, parse_schedule, ratio_at, synthetic_count
from shared.datasets import DATASETS, LabelledImages, TorchImageDataset, load_dataset
from shared.distributed import ONE_PROCESS, Distributed, from_env
from shared.distributed import start as start_distributed
from shared.distributed import stop as stop_distributed
from shared.errors import CheckpointError, ConfigError, DatasetError
from shared.figures import save_figure
from shared.images import atomic_write_bytes, atomic_write_json, sha256_file
from shared.metrics import binary_metrics, summarize_folds
from shared.models.classifier import (
    ARCHS,
    build_classifier,
    classifier_config,
    classifier_transform,
    save_classifier,
    set_train_mode,
)
from shared.plausibility import fit_gate
from shared.runtime import seed_everything, set_rng_state
from shared.splits import develop_and_holdout, holdout_indices, patient_kfold
from shared.synthetic import SYNTHETIC_PREFIX, load_synthetic

log = logging.getLogger(__name__)

TRAINING_STATE = "classifier-training-state"
# Options that do not change what is trained: a resumed run may give other values.
# fold_index differs between the pods of one cross-validation, so it is not part of what a run trains either.
RESUME_MAY_CHANGE = frozenset(
    {"resume", "workers", "cpu", "model_dir", "results_dir", "figures_dir", "verbose", "fold_index"}
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # The seed's flags and defaults.
    parser.add_argument("--data-dir", default="./data/processed", help="dataset location")
    parser.add_argument("--synthetic-dir", default="./data/synthetic", help="synthetic images (generate-synthetic)")
    parser.add_argument("--model-dir", default="./models", help="where classifier checkpoints go")
    parser.add_argument("--results-dir", default="./results/metrics", help="where the metrics JSON files go")
    parser.add_argument("--figures-dir", default="./results/figures", help="where the plots go")
    parser.add_argument("--epochs", type=int, default=15, help="training epochs per fold")
    parser.add_argument("--batch-size", type=int, default=32, help="mini-batch size")
    parser.add_argument("--lr", type=float, default=0.001, help="learning rate (max lr with --scheduler onecycle)")
    parser.add_argument("--unfreeze", action="store_true", help="train the whole network, not only the head")
    parser.add_argument("--k-folds", type=int, default=5, help="cross-validation folds (1: one train/val split)")
    parser.add_argument("--workers", type=int, default=4, help="data loader worker processes")
    parser.add_argument("--use-synthetic", action="store_true", help="add synthetic images to the training folds")
    parser.add_argument(
        "--use-curriculum", action="store_true", help="raise the synthetic share per epoch (needs --use-synthetic)"
    )
    parser.add_argument(
        "--curriculum-schedule",
        default="0:0.0, 5:0.25, 10:0.5",
        help="EPOCH:RATIO, ...: share of an epoch's samples that are synthetic, from that 0-based epoch on",
    )
    parser.add_argument("--cpu", action="store_true", help="force CPU even where CUDA is available")
    # Additions.
    parser.add_argument("--dataset", choices=DATASETS, default="rsna", help="dataset source")
    parser.add_argument("--arch", choices=ARCHS, default="resnet50", help="ResNet architecture")
    parser.add_argument(
        "--weights", default="imagenet", help="'imagenet' (local torch hub cache only), 'none' or a checkpoint path"
    )
    parser.add_argument("--image-size", type=int, default=224, help="input size (<= 64: small-input stem)")
    parser.add_argument("--channels", type=int, choices=(1, 3), default=3, help="input channels")
    parser.add_argument("--seed", type=int, default=0, help="seed for folds, subsets, initialisation and sampling")
    parser.add_argument(
        "--max-images", type=int, default=None, help="seeded stratified patient-level subset of the development set"
    )
    parser.add_argument(
        "--val-fraction", type=float, default=0.15, help="share of patients for validation when --k-folds 1"
    )
    parser.add_argument(
        "--class-balance",
        choices=("weighted-loss", "sampler", "none"),
        default="weighted-loss",
        help="counter class imbalance with inverse class frequencies of the real training fold",
    )
    parser.add_argument(
        "--scheduler",
        choices=("none", "onecycle"),
        default="none",
        help="none: Adam at --lr (the seed); onecycle: AdamW + OneCycleLR with max lr --lr",
    )
    parser.add_argument(
        "--fold-index",
        type=int,
        default=None,
        help="train only fold FOLD_INDEX + 1 (0-based, e.g. a Kubernetes Indexed Job's completion index); the "
        "strategy's results are written by whichever fold finishes last",
    )
    parser.add_argument(
        "--target-sensitivity",
        type=float,
        default=None,
        help="choose the decision threshold on validation data as the highest reaching this sensitivity "
        "(default: Youden's J)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --model-dir from its last epoch (same options): finished folds are not retrained",
    )


def strategy_name(args: argparse.Namespace) -> str:
    if args.use_curriculum:
        return "curriculum"
    return "augmented" if args.use_synthetic else "baseline"


def check_args(args: argparse.Namespace) -> Schedule | None:
    """Reject option values that cannot work; return the curriculum schedule (None without --use-curriculum)."""
    if args.use_curriculum and not args.use_synthetic:
        raise ConfigError("--use-curriculum schedules synthetic images: add --use-synthetic")
    for flag, value in (("--epochs", args.epochs), ("--batch-size", args.batch_size), ("--k-folds", args.k_folds)):
        if value < 1:
            raise ConfigError(f"{flag} must be at least 1, got {value}")
    if args.lr <= 0:
        raise ConfigError(f"--lr must be positive, got {args.lr}")
    if args.workers < 0:
        raise ConfigError(f"--workers must be >= 0, got {args.workers}")
    if args.image_size < 8:
        raise ConfigError(f"--image-size must be at least 8, got {args.image_size}")
    if args.k_folds == 1 and not 0.0 < args.val_fraction < 1.0:
        raise ConfigError(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    if args.max_images is not None and args.max_images < 1:
        raise ConfigError(f"--max-images must be at least 1, got {args.max_images}")
    if args.fold_index is not None and not 0 <= args.fold_index < args.k_folds:
        raise ConfigError(
            f"--fold-index must be in 0..{args.k_folds - 1} (--k-folds {args.k_folds}), got {args.fold_index}"
        )
    if args.target_sensitivity is not None and not 0.0 < args.target_sensitivity <= 1.0:
        raise ConfigError(f"--target-sensitivity must be in (0, 1], got {args.target_sensitivity}")
    processes = from_env()  # under torchrun: refused before the processes wait for each other
    if processes.enabled and args.class_balance == "sampler":
        raise ConfigError("--class-balance sampler draws one process's epoch; with torchrun use weighted-loss")
    processes.per_rank_batch_size(args.batch_size)
    return parse_schedule(args.curriculum_schedule) if args.use_curriculum else None


def assert_real_only(images: LabelledImages, where: str) -> None:
    """Validation folds and the hold-out must never hold a synthetic image."""
    synthetic = [pid for pid in images.patient_ids if pid.startswith(SYNTHETIC_PREFIX)]
    if synthetic:
        raise RuntimeError(f"{len(synthetic)} synthetic images in the {where} (e.g. {synthetic[0]}): refusing to go on")


def subsample(images: LabelledImages, max_images: int, seed: int) -> LabelledImages:
    """A seeded, class-stratified, patient-level subset of about `max_images` images (all of them if fewer)."""
    if max_images >= len(images):
        return images
    try:
        _, kept = holdout_indices(images.patient_ids, images.labels, fraction=max_images / len(images), seed=seed)
    except ConfigError as exc:
        raise ConfigError(f"--max-images {max_images} is too small to keep patients of both classes") from exc
    return images.subset(kept)


def fold_indices(
    develop: LabelledImages, k: int, val_fraction: float, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, validation) image indices into `develop`: k patient-level folds, or one split for k = 1."""
    if k == 1:
        return [holdout_indices(develop.patient_ids, develop.labels, fraction=val_fraction, seed=seed)]
    return patient_kfold(develop.patient_ids, develop.labels, k, seed=seed)


def class_weights(labels: np.ndarray) -> torch.Tensor:
    """Inverse class frequencies, n / (2 n_c), so that both classes weigh as much in total."""
    counts = np.bincount(labels, minlength=2)
    if (counts == 0).any():
        raise DatasetError(f"a training fold lacks a class (counts normal/pneumonia = {counts.tolist()})")
    return torch.tensor(len(labels) / (2.0 * counts), dtype=torch.float32)


def synthetic_plan(strategy: str, epochs: int, n_real: int, pool_size: int, schedule: Schedule | None) -> list[int]:
    """How many synthetic samples each epoch of a fold draws."""
    if strategy == "baseline":
        return [0] * epochs
    if strategy == "augmented":
        return [pool_size] * epochs
    assert schedule is not None
    return [synthetic_count(ratio_at(schedule, epoch), n_real, pool_size) for epoch in range(epochs)]


def training_loader(
    real: LabelledImages,
    synthetic: LabelledImages | None,
    transform: Callable,
    args: argparse.Namespace,
    weights: torch.Tensor,
    ctx: Distributed,
    shuffle_seed: int,
    epoch: int,
) -> DataLoader:
    """One epoch's training data: the real training fold plus the synthetic images drawn for it (this rank's shard
    of them, shuffled by `shuffle_seed` and `epoch`, when there are several processes)."""
    datasets: list[Dataset] = [TorchImageDataset(real, transform)]
    labels = [real.labels]
    if synthetic is not None and len(synthetic):
        datasets.append(TorchImageDataset(synthetic, transform))
        labels.append(synthetic.labels)
    dataset = ConcatDataset(datasets)
    sampler = ctx.sampler(dataset, shuffle_seed, epoch)
    if args.class_balance == "sampler":
        sample_weights = weights[torch.from_numpy(np.concatenate(labels))].double()
        sampler = WeightedRandomSampler(sample_weights, num_samples=len(dataset), replacement=True)
    return DataLoader(
        dataset,
        batch_size=ctx.per_rank_batch_size(args.batch_size),
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=args.workers,
        pin_memory=torch.cuda.is_available() and not args.cpu,
    )


def evaluation_loader(images: LabelledImages, transform: Callable, args: argparse.Namespace) -> DataLoader:
    return DataLoader(
        TorchImageDataset(images, transform),
        batch_size=args.batch_size,
        shuffle=False,
        num_workers=args.workers,
        pin_memory=torch.cuda.is_available() and not args.cpu,
    )


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    device: torch.device,
    desc: str,
    ctx: Distributed = ONE_PROCESS,
) -> tuple[float, float]:
    """One pass over `loader` (this rank's shard); (mean training loss, training accuracy) over all ranks."""
    set_train_mode(model.module if isinstance(model, DistributedDataParallel) else model)
    total_loss, correct, seen = 0.0, 0, 0
    for images, labels in ctx.progress(loader, desc=desc, leave=False):
        images, labels = images.to(device), labels.to(device)  # batch x C x S x S, batch
        logits = model(images)  # batch x 2
        loss = criterion(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total_loss += loss.item() * len(labels)
        correct += (logits.argmax(dim=1) == labels).sum().item()
        seen += len(labels)
    total_loss, correct, seen = ctx.sum([total_loss, correct, seen], device)
    return total_loss / seen, correct / seen


@torch.no_grad()
def predict_logits(model: nn.Module, loader: DataLoader, device: torch.device) -> tuple[np.ndarray, np.ndarray, float]:
    """(labels, logits N x 2, mean unweighted cross-entropy) over `loader`, in eval mode."""
    model.eval()
    labels, all_logits, total_loss = [], [], 0.0
    for images, targets in tqdm(loader, desc="evaluate", leave=False):
        logits = model(images.to(device))  # batch x 2
        total_loss += nn.functional.cross_entropy(logits, targets.to(device), reduction="sum").item()
        all_logits.append(logits.detach().double().cpu().numpy())
        labels.append(targets.numpy())
    y_true = np.concatenate(labels)
    return y_true, np.concatenate(all_logits), total_loss / len(y_true)


def predict(model: nn.Module, loader: DataLoader, device: torch.device) -> tuple[np.ndarray, np.ndarray, float]:
    """(labels, P(pneumonia) by plain softmax, mean unweighted cross-entropy) over `loader`, in eval mode."""
    y_true, logits, loss = predict_logits(model, loader, device)
    return y_true, pneumonia_probability(logits), loss


def fit_fold_operating_point(
    model: nn.Module,
    train_real: LabelledImages,
    val: LabelledImages,
    config: dict[str, Any],
    args: argparse.Namespace,
    device: torch.device,
) -> dict[str, Any]:
    """The fold model's config plus its calibration (temperature and threshold, fitted on the validation fold) and
    plausibility gate (fitted on the real training fold, its feature threshold on the validation fold). Hold-out and
    synthetic images are never used here."""
    eval_transform = classifier_transform(config, train=False)
    y_val, val_logits, _ = predict_logits(model, evaluation_loader(val, eval_transform, args), device)
    try:
        calibration = fit_calibration(val_logits, y_val, args.target_sensitivity)
    except CalibrationError as exc:
        raise DatasetError(f"cannot calibrate on this validation fold: {exc}") from exc
    gate = fit_gate(model, eval_transform, train_real, val, device, seed=args.seed)
    log.info(
        "calibration: temperature %.3f, threshold %.3f (%s; validation sensitivity %.3f, specificity %.3f), "
        "ECE %.3f -> %.3f",
        calibration.temperature,
        calibration.threshold,
        calibration.method,
        calibration.val_sensitivity,
        calibration.val_specificity,
        calibration.ece_before,
        calibration.ece_after,
    )
    return {**config, "calibration": calibration.to_dict(), "plausibility": gate.to_dict()}


def holdout_evaluation(
    model: nn.Module, loader: DataLoader, device: torch.device, calibration: Calibration
) -> tuple[dict[str, Any], dict[str, Any], dict[str, list[float]]]:
    """Hold-out metrics at 0.5 on plain softmax, at the calibrated operating point (with ECE before and after
    calibration), and both probability lists (for the reliability diagram)."""
    y_true, logits, _ = predict_logits(model, loader, device)
    plain = pneumonia_probability(logits)
    calibrated = calibrated_probability(logits, calibration)
    at_half = binary_metrics(y_true, plain)
    operating = binary_metrics(y_true, calibrated, calibration.threshold)
    operating["ece_uncalibrated"] = expected_calibration_error(plain, y_true)
    operating["ece_calibrated"] = expected_calibration_error(calibrated, y_true)
    return (
        at_half,
        operating,
        {"labels": y_true.tolist(), "uncalibrated": plain.tolist(), "calibrated": calibrated.tolist()},
    )


def evaluate(model: nn.Module, loader: DataLoader, device: torch.device) -> tuple[float, dict[str, Any]]:
    """(mean unweighted cross-entropy, binary_metrics) of `model` on `loader`."""
    y_true, p_pneumonia, loss = predict(model, loader, device)
    return loss, binary_metrics(y_true, p_pneumonia)


@dataclass
class FoldHooks:
    """What train_fold calls: `save_state` with the fold's resumable state after every epoch, then `report` with the
    epoch's history entry; `should_stop` before every epoch."""

    report: Callable[[dict[str, Any]], None]
    save_state: Callable[[dict[str, Any]], None]
    should_stop: StopCheck | None = None


def train_fold(
    fold: int,
    train_real: LabelledImages,
    val: LabelledImages,
    pool: LabelledImages | None,
    config: dict[str, Any],
    args: argparse.Namespace,
    schedule: Schedule | None,
    device: torch.device,
    hooks: FoldHooks,
    saved: dict[str, Any] | None = None,
    ctx: Distributed = ONE_PROCESS,
) -> tuple[nn.Module, list[dict[str, Any]], dict[str, Any]]:
    """Train one fold's model, from scratch or from `saved` (a state this function saved); (model, history per
    epoch, validation metrics after the last epoch). With several processes only rank 0 evaluates, saves and
    reports (the others return an empty validation result)."""
    seed_everything(args.seed + fold)
    strategy = config["strategy"]
    model = build_classifier(
        args.arch, 2, args.channels, args.image_size, args.weights, freeze_backbone=not args.unfreeze
    ).to(device)
    trained = ctx.wrap(model, device)  # `model` itself for one process
    if ctx.enabled:  # the same initial weights everywhere, but each rank its own augmentation draws
        seed_everything(int(np.random.SeedSequence([args.seed, fold, ctx.rank]).generate_state(1)[0]))
    weights = class_weights(train_real.labels)
    criterion = nn.CrossEntropyLoss(weight=weights.to(device) if args.class_balance == "weighted-loss" else None)
    parameters = [p for p in model.parameters() if p.requires_grad]
    plan = synthetic_plan(strategy, args.epochs, len(train_real), len(pool) if pool is not None else 0, schedule)
    if args.scheduler == "onecycle":
        optimizer: torch.optim.Optimizer = torch.optim.AdamW(parameters, lr=args.lr)
        rank_batch_size = ctx.per_rank_batch_size(args.batch_size)
        total_steps = sum(math.ceil(math.ceil((len(train_real) + n) / ctx.world_size) / rank_batch_size) for n in plan)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=total_steps)
    else:
        optimizer, scheduler = torch.optim.Adam(parameters, lr=args.lr), None

    train_transform, eval_transform = classifier_transform(config, train=True), classifier_transform(config, False)
    val_loader = evaluation_loader(val, eval_transform, args)
    rng = np.random.default_rng([args.seed, fold])  # which synthetic images each epoch draws
    history: list[dict[str, Any]] = []
    val_metrics: dict[str, Any] = {}
    if saved is not None:
        history, val_metrics = restore_fold(saved, model, optimizer, scheduler, rng, ctx.rank)
    for epoch in range(len(history), args.epochs):
        stop_if_asked(hooks.should_stop, f"before {strategy} fold {fold} epoch {epoch + 1}")
        n_synthetic = plan[epoch]
        started = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        drawn = None
        if n_synthetic:
            assert pool is not None
            drawn = pool.subset(np.sort(rng.choice(len(pool), size=n_synthetic, replace=False)))
        loader = training_loader(train_real, drawn, train_transform, args, weights, ctx, args.seed + fold, epoch)
        desc = f"{strategy} fold {fold} epoch {epoch + 1}/{args.epochs}"
        train_loss, train_acc = train_one_epoch(trained, loader, criterion, optimizer, scheduler, device, desc, ctx)
        if not ctx.is_main:
            ctx.rng_states()  # waits while rank 0 evaluates
            history.append({"epoch": epoch})
            ctx.barrier()  # while rank 0 saves the epoch
            continue
        val_loss, val_metrics = evaluate(model, val_loader, device)
        rank_rng_states = ctx.rng_states()  # after every draw of the epoch (evaluating draws a loader seed)
        entry = {
            "epoch": epoch,
            "train_loss": train_loss,
            "train_acc": train_acc,
            "val_loss": val_loss,
            "val_acc": val_metrics["accuracy"],
            "val_auroc": val_metrics["auroc"],
            "synthetic_ratio": n_synthetic / (n_synthetic + len(train_real)),
            "n_real": len(train_real),
            "n_synthetic": n_synthetic,
            "lr": lr,
            "seconds": time.perf_counter() - started,
        }
        history.append(entry)
        auroc = "n/a" if entry["val_auroc"] is None else f"{entry['val_auroc']:.3f}"
        log.info(
            "%s: train loss %.4f acc %.3f | val loss %.4f acc %.3f AUROC %s | synthetic %.0f%% | %.0f s",
            desc,
            train_loss,
            train_acc,
            val_loss,
            entry["val_acc"],
            auroc,
            100 * entry["synthetic_ratio"],
            entry["seconds"],
        )
        hooks.save_state(fold_state(fold, history, val_metrics, model, optimizer, scheduler, rng, rank_rng_states))
        hooks.report(entry)
        ctx.barrier()
    ctx.check_in_sync(model, device)
    return model, history, val_metrics


def fold_state(
    fold: int,
    history: list[dict[str, Any]],
    val_metrics: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    rng: np.random.Generator,
    rank_rng_states: list[dict[str, Any]],
) -> dict[str, Any]:
    """Everything an exact resume of the fold after its latest epoch needs (the global RNGs of every rank)."""
    return {
        "fold": fold,
        "history": list(history),
        "val_metrics": val_metrics,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng_state": rank_rng_states[0],
        "rank_rng_states": rank_rng_states,
        "synthetic_rng": rng.bit_generator.state,
    }


def restore_fold(
    saved: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    rng: np.random.Generator,
    rank: int = 0,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Load a fold_state into the freshly built objects (each rank its own RNGs); (history so far, latest validation
    metrics)."""
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(saved["scheduler"])
    rng.bit_generator.state = saved["synthetic_rng"]
    rank_states = saved.get("rank_rng_states")
    # last: building the objects above drew from the global RNGs
    set_rng_state(rank_states[rank] if rank_states else saved["rng_state"])
    log.info("resuming fold %d after epoch %d", saved["fold"], len(saved["history"]))
    return list(saved["history"]), saved["val_metrics"]


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


def run_config(args: argparse.Namespace) -> dict[str, Any]:
    """Every command-line option (JSON values only)."""
    return {k: v for k, v in vars(args).items() if isinstance(v, str | int | float | bool | type(None))}


def resume_config(args: argparse.Namespace) -> dict[str, Any]:
    """The options that define what a run trains (stored in its training state; a resume must repeat them)."""
    config = {k: v for k, v in run_config(args).items() if k not in RESUME_MAY_CHANGE and k != "command"}
    config["data_dir"] = str(Path(args.data_dir).resolve())
    config["synthetic_dir"] = str(Path(args.synthetic_dir).resolve()) if args.use_synthetic else None
    if args.weights not in ("imagenet", "none"):
        config["weights"] = str(Path(args.weights).resolve())
    return config


def training_state_path(model_dir: Path, strategy: str, arch: str, fold: int | None = None) -> Path:
    """The run's resumable state; a single-fold run (--fold-index) has its own per fold."""
    if fold is not None:
        return model_dir / f"fold_{fold}_{strategy}_{arch}_training_state.pth"
    return model_dir / f"{strategy}_{arch}_training_state.pth"


def finished_fold_records(
    model_dir: Path, num_folds: int, config: dict[str, Any], strategy: str, arch: str
) -> list[dict[str, Any]] | None:
    """Every fold's record from the single-fold runs' states, once all folds are finished (else None)."""
    records = []
    for fold in range(1, num_folds + 1):
        path = training_state_path(model_dir, strategy, arch, fold)
        if not path.is_file():
            return None
        done, _ = load_resume_state(path, config, model_dir, strategy, arch)
        if not done:
            return None
        records.extend(done)
    return sorted(records, key=lambda record: record["fold"])


def fold_model_path(model_dir: Path, fold: int, strategy: str, arch: str) -> Path:
    return model_dir / f"fold_{fold}_{strategy}_{arch}.pth"


def check_resumable(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    """Raise CheckpointError if the saved run was started with options that differ from the current ones."""
    differing = sorted(k for k in saved.keys() | current.keys() if saved.get(k) != current.get(k))
    if differing:
        details = "; ".join(f"{k}: {saved.get(k)!r} in the checkpoint, {current.get(k)!r} now" for k in differing)
        raise CheckpointError(f"cannot resume from {path}: it was trained with other options ({details})")


def load_resume_state(
    path: Path, config: dict[str, Any], model_dir: Path, strategy: str, arch: str
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """(records of the finished folds, state of the fold in progress or None) of the run saved at `path`."""
    state = load_checkpoint(path, TRAINING_STATE)
    check_resumable(state["config"], config, path)
    for record in state["folds_done"]:
        fold_path = fold_model_path(model_dir, record["fold"], strategy, arch)
        if not fold_path.is_file() or sha256_file(fold_path) != record["model_sha256"]:
            raise CheckpointError(
                f"cannot resume from {path}: fold {record['fold']}'s model {fold_path} is missing or was replaced"
            )
    log.info("resuming %s from %s: %d fold(s) finished", strategy, path, len(state["folds_done"]))
    return list(state["folds_done"]), state["current"]


def train_strategy(
    args: argparse.Namespace, progress: Progress | None = None, should_stop: StopCheck | None = None
) -> dict[str, Any] | None:
    """Train and evaluate one strategy end to end; write checkpoints, metrics and figures; return the final metrics.

    With --fold-index only that fold is trained; the results are written (and returned) only by the run that finds
    every fold finished, else None.

    `progress`, when given, is called after every epoch's training state is written, with {"strategy", "fold",
    "num_folds", "epochs"} and the epoch's history entry ("epoch" counts from 0). `should_stop` is asked before every
    epoch; True raises TrainingStopped, leaving the training state for --resume.

    Under torchrun every rank trains; rank 0 alone writes and returns the results (the others return None).
    """
    schedule = check_args(args)
    ctx, device = start_distributed(args.cpu)
    strategy = strategy_name(args)
    model_dir = Path(args.model_dir)
    only_fold = None if args.fold_index is None else args.fold_index + 1
    state_path = training_state_path(model_dir, strategy, args.arch, only_fold)
    state_config = resume_config(args)
    if ctx.enabled:  # a resume must use as many processes: the shards and RNG streams depend on it
        state_config["world_size"] = ctx.world_size
    folds_done: list[dict[str, Any]] = []  # {"fold", "history", "val_metrics", "holdout_metrics", ...} per fold
    current: dict[str, Any] | None = None  # the fold in progress (fold_state)
    if args.resume:
        folds_done, current = load_resume_state(state_path, state_config, model_dir, strategy, args.arch)
    elif state_path.exists() and ctx.is_main:
        log.warning("starting afresh; %s will be overwritten (use --resume to continue it)", state_path)
    seed_everything(args.seed)

    develop, holdout = develop_and_holdout(load_dataset(args.dataset, args.data_dir))
    assert_real_only(develop, "development set")
    assert_real_only(holdout, "hold-out test set")
    if args.max_images is not None:
        develop = subsample(develop, args.max_images, args.seed)
    pool = load_synthetic(args.synthetic_dir) if args.use_synthetic else None
    folds = fold_indices(develop, args.k_folds, args.val_fraction, args.seed)
    log.info(
        "%s: %d development images (%s), %d hold-out, %d synthetic in the pool, %d fold(s), %s on %s",
        strategy,
        len(develop),
        develop.class_counts(),
        len(holdout),
        len(pool) if pool is not None else 0,
        len(folds),
        args.arch,
        device,
    )

    config = classifier_config(args.arch, args.channels, args.image_size, strategy, args.weights)
    holdout_loader = evaluation_loader(holdout, classifier_transform(config, train=False), args)
    model_dir.mkdir(parents=True, exist_ok=True)

    def save_state(fold_in_progress: dict[str, Any] | None) -> None:  # rank 0 only
        save_checkpoint(state_path, TRAINING_STATE, state_config, folds_done=folds_done, current=fold_in_progress)

    for fold, (train_idx, val_idx) in enumerate(folds, start=1):
        if only_fold is not None and fold != only_fold:
            continue  # another pod's fold
        if any(record["fold"] == fold for record in folds_done):
            continue  # finished before the run was interrupted: its model and results are reused
        train_real, val = develop.subset(train_idx), develop.subset(val_idx)
        assert_real_only(val, f"validation fold {fold}")

        def report(entry: dict[str, Any], fold: int = fold) -> None:
            if progress is not None:
                progress({"strategy": strategy, "fold": fold, "num_folds": len(folds), "epochs": args.epochs, **entry})

        hooks = FoldHooks(report, save_state, should_stop)
        saved = current if current is not None and current["fold"] == fold else None
        model, history, val_metrics = train_fold(
            fold, train_real, val, pool, config, args, schedule, device, hooks, saved, ctx
        )
        if not ctx.is_main:
            ctx.barrier()  # while rank 0 calibrates, evaluates and saves the fold model
            continue
        fold_config = fit_fold_operating_point(model, train_real, val, config, args, device)
        holdout_metrics, holdout_operating, holdout_probabilities = holdout_evaluation(
            model, holdout_loader, device, Calibration.from_dict(fold_config["calibration"])
        )
        fold_path = fold_model_path(model_dir, fold, strategy, args.arch)
        save_classifier(fold_path, model, fold_config)
        folds_done.append(
            {
                "fold": fold,
                "history": history,
                "val_metrics": val_metrics,
                "holdout_metrics": holdout_metrics,
                "holdout_operating_point": holdout_operating,
                "holdout_probabilities": holdout_probabilities,
                "calibration": fold_config["calibration"],
                "n_train_real": len(train_real),
                "model_sha256": sha256_file(fold_path),
            }
        )
        save_state(None)
        ctx.barrier()
    if not ctx.is_main:
        return None
    if only_fold is not None:
        folds_done = finished_fold_records(model_dir, len(folds), state_config, strategy, args.arch) or []
        if not folds_done:
            log.info(
                "%s fold %d of %d finished; the last fold to finish writes the results", strategy, only_fold, len(folds)
            )
            return None
    return write_strategy_results(args, strategy, schedule, folds_done, develop, holdout, pool)


def write_strategy_results(
    args: argparse.Namespace,
    strategy: str,
    schedule: Schedule | None,
    folds_done: list[dict[str, Any]],
    develop: LabelledImages,
    holdout: LabelledImages,
    pool: LabelledImages | None,
) -> dict[str, Any]:
    """Select the strategy's model among the fold models; write the metrics and figures; return the final metrics."""
    model_dir, results_dir, figures_dir = Path(args.model_dir), Path(args.results_dir), Path(args.figures_dir)
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
    model_path = model_dir / f"{strategy}_{args.arch}.pth"
    atomic_write_bytes(model_path, fold_model_path(model_dir, best["fold"], strategy, args.arch).read_bytes())
    cv_summary = {"strategy": strategy, "folds": val_per_fold, **summarize_folds(val_per_fold)}
    final = {
        "strategy": strategy,
        "model": str(model_path),
        "selected_fold": best["fold"],
        "holdout": holdout_per_fold[best["fold"] - 1],
        "holdout_per_fold": holdout_per_fold,
        "holdout_summary": summarize_folds(holdout_per_fold),
        # At each fold model's own calibrated threshold (fitted on its validation fold), with ECE before and after.
        "holdout_operating_point": operating_per_fold[best["fold"] - 1],
        "holdout_operating_point_per_fold": operating_per_fold,
        "holdout_operating_point_summary": summarize_folds(operating_per_fold),
        "calibration": folds_done[best["fold"] - 1]["calibration"],
        "target_sensitivity": args.target_sensitivity,
        "class_balance": args.class_balance,
        "n_train_real": best["n_train_real"],
        "n_synthetic_pool": len(pool) if pool is not None else 0,
        "n_develop": len(develop),
        "n_holdout": len(holdout),
        "dataset": args.dataset,
        "arch": args.arch,
    }
    atomic_write_json(
        results_dir / f"{strategy}_training_history.json",
        {"strategy": strategy, "config": run_config(args), "folds": fold_histories},
    )
    atomic_write_json(results_dir / f"{strategy}_cv_summary.json", cv_summary)
    atomic_write_json(results_dir / f"{strategy}_final_metrics.json", final)
    plot_training_curves(strategy, fold_histories, figures_dir / f"{strategy}_training_curves.png")
    if schedule is not None:
        plot_synthetic_ratio(strategy, fold_histories, schedule, figures_dir / f"{strategy}_synthetic_ratio.png")
    plot_cv_metrics(strategy, val_per_fold, cv_summary, figures_dir / f"{strategy}_cv_metrics.png")
    plot_holdout_reliability(strategy, folds_done, figures_dir / f"{strategy}_reliability.png")
    return final


def plot_holdout_reliability(strategy: str, folds_done: list[dict[str, Any]], path: Path) -> None:
    """Reliability on the hold-out of every fold model's predictions pooled: plain softmax vs calibrated."""
    labels = np.concatenate([r["holdout_probabilities"]["labels"] for r in folds_done])
    curves = {
        name: (np.concatenate([r["holdout_probabilities"][key] for r in folds_done]), labels)
        for name, key in (("softmax", "uncalibrated"), ("temperature-scaled", "calibrated"))
    }
    plot_reliability(curves, path, title=f"{strategy}: hold-out reliability ({len(folds_done)} fold models)")


def format_summary(final: dict[str, Any]) -> str:
    """A short table: hold-out metrics of each fold model and of the selected model."""

    def cell(value: float | None) -> str:
        return "   n/a" if value is None else f"{value:6.3f}"

    names = ("accuracy", "auroc", "sensitivity", "specificity", "f1")
    rows = [f"{final['strategy']} ({final['arch']}, {final['dataset']}): hold-out test metrics"]
    rows.append(f"{'model':<14}" + "".join(f"{n:>13}" for n in names))
    for metrics in final["holdout_per_fold"]:
        rows.append(f"{'fold ' + str(metrics['fold']):<14}" + "".join(f"{cell(metrics[n]):>13}" for n in names))
    rows.append(
        f"{'selected (' + str(final['selected_fold']) + ')':<14}"
        + "".join(f"{cell(final['holdout'][n]):>13}" for n in names)
    )
    op = final["holdout_operating_point"]
    rows.append(
        f"{'selected @ op':<14}"
        + "".join(f"{cell(op[n]):>13}" for n in names)
        + f"   (threshold {op['threshold']:.3f}, "
        f"ECE {op['ece_uncalibrated']:.3f} -> {op['ece_calibrated']:.3f})"
    )
    rows.append(f"model: {final['model']}")
    return "\n".join(rows)


def main(args: argparse.Namespace) -> int:
    try:
        final = train_strategy(args)
    finally:
        stop_distributed()
    if not from_env().is_main:
        return 0
    if final is None:
        print(f"fold {args.fold_index + 1} of {args.k_folds} done; the results follow when every fold has finished")
        return 0
    print(format_summary(final))
    return 0
