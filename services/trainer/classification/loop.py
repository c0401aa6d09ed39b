"""Training one fold's model, epoch by epoch; what it saves and reports goes through its hooks."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from services.trainer.classification.data import (
    class_weights,
    evaluation_loader,
    resampled_real,
    synthetic_plan,
    training_loader,
)
from services.trainer.classification.state import (
    fold_state,
    restore_fold,
)
from services.trainer.hooks import StopCheck, stop_if_asked
from shared.configs import ClassifierTrainingConfig
from shared.curriculum import Schedule
from shared.datasets import LabelledImages
from shared.distributed import ONE_PROCESS, Distributed
from shared.models.classifier import (
    build_classifier,
    classifier_transform,
)
from shared.runtime import seed_everything
from shared.training.loop import evaluate, train_one_epoch

log = logging.getLogger(__name__)


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
    options: ClassifierTrainingConfig,
    schedule: Schedule | None,
    device: torch.device,
    hooks: FoldHooks,
    saved: dict[str, Any] | None = None,
    ctx: Distributed = ONE_PROCESS,
    matched_pool_size: int = 0,
) -> tuple[nn.Module, list[dict[str, Any]], dict[str, Any]]:
    """Train one fold's model, from scratch or from `saved` (a state this function saved); (model, history per
    epoch, validation metrics after the last epoch). With several processes only rank 0 evaluates, saves and
    reports (the others return an empty validation result).

    A --match-compute run (no `pool`) draws the plan of a pool of `matched_pool_size` images from resampled real
    training images instead."""
    seed_everything(options.seed + fold)
    strategy = config["strategy"]
    model = build_classifier(
        options.arch,
        2,
        options.channels,
        options.image_size,
        options.weights,
        freeze_backbone=not options.unfreeze,
        stem_pool=options.stem_pool,
    ).to(device)
    trained = ctx.wrap(model, device)  # `model` itself for one process
    if ctx.enabled:  # the same initial weights everywhere, but each rank its own augmentation draws
        seed_everything(int(np.random.SeedSequence([options.seed, fold, ctx.rank]).generate_state(1)[0]))
    weights = class_weights(train_real.labels)
    criterion = nn.CrossEntropyLoss(weight=weights.to(device) if options.class_balance == "weighted-loss" else None)
    parameters = [p for p in model.parameters() if p.requires_grad]
    matched = options.match_compute
    pool_size = matched_pool_size if matched else len(pool) if pool is not None else 0
    plan = synthetic_plan(options.sampling, options.epochs, len(train_real), pool_size, schedule)
    decay = {} if options.weight_decay is None else {"weight_decay": options.weight_decay}
    if options.scheduler == "onecycle":
        optimizer: torch.optim.Optimizer = torch.optim.AdamW(parameters, lr=options.lr, **decay)
        rank_batch_size = ctx.per_rank_batch_size(options.batch_size)
        total_steps = sum(math.ceil(math.ceil((len(train_real) + n) / ctx.world_size) / rank_batch_size) for n in plan)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=options.lr, total_steps=total_steps)
    else:
        optimizer, scheduler = torch.optim.Adam(parameters, lr=options.lr, **decay), None

    train_transform, eval_transform = classifier_transform(config, train=True), classifier_transform(config, False)
    val_loader = evaluation_loader(val, eval_transform, options)
    rng = np.random.default_rng([options.seed, fold])  # which synthetic images each epoch draws
    history: list[dict[str, Any]] = []
    val_metrics: dict[str, Any] = {}
    if saved is not None:
        history, val_metrics = restore_fold(saved, model, optimizer, scheduler, rng, ctx.rank)
    for epoch in range(len(history), options.epochs):
        stop_if_asked(hooks.should_stop, f"before {strategy} fold {fold} epoch {epoch + 1}")
        n_synthetic = plan[epoch]
        started = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        drawn = None
        if n_synthetic and matched:
            drawn = resampled_real(train_real, n_synthetic, rng)
        elif n_synthetic:
            assert pool is not None
            drawn = pool.subset(np.sort(rng.choice(len(pool), size=n_synthetic, replace=False)))
        loader = training_loader(train_real, drawn, train_transform, options, weights, ctx, options.seed + fold, epoch)
        desc = f"{strategy} fold {fold} epoch {epoch + 1}/{options.epochs}"
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
            "synthetic_ratio": 0.0 if matched else n_synthetic / (n_synthetic + len(train_real)),
            "n_real": len(train_real),
            "n_synthetic": 0 if matched else n_synthetic,
            "n_resampled_real": n_synthetic if matched else 0,
            "optimizer_steps": len(loader),  # one step per batch
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
