"""Train and evaluate one strategy end to end: every fold (or one), resumable, then the results."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from services.trainer.classification.data import (
    assert_real_only,
    class_mix,
    evaluation_loader,
    fold_indices,
    subsample,
)
from services.trainer.classification.final_model import final_model
from services.trainer.classification.loop import FoldHooks, train_fold
from services.trainer.classification.operating_point import (
    apply_operating_point,
    fit_fold_operating_point,
    holdout_evaluation,
)
from services.trainer.classification.results import write_strategy_results
from services.trainer.classification.shift import gated_predictions, shifted_holdout_predictions, shifted_holdouts
from services.trainer.classification.state import (
    TRAINING_STATE,
    finished_fold_records,
    fold_model_path,
    load_resume_state,
    resume_config,
    training_state_path,
)
from services.trainer.hooks import Progress, StopCheck
from shared.calibration import (
    Calibration,
)
from shared.checkpoints import save_checkpoint
from shared.configs import ClassifierTrainingConfig
from shared.datasets import load_dataset
from shared.distributed import from_env
from shared.distributed import start as start_distributed
from shared.errors import ConfigError
from shared.images import sha256_file
from shared.models.classifier import (
    classifier_config,
    classifier_transform,
    save_classifier,
)
from shared.plausibility import PlausibilityGate
from shared.runtime import seed_everything
from shared.splits import develop_and_holdout
from shared.synthetic import load_synthetic, read_manifest

log = logging.getLogger(__name__)


def check_environment(options: ClassifierTrainingConfig) -> None:
    """Refuse under torchrun, before the processes wait for each other, what the processes cannot share."""
    processes = from_env()
    if processes.enabled and options.class_balance == "sampler":
        raise ConfigError("--class-balance sampler draws one process's epoch; with torchrun use weighted-loss")
    processes.per_rank_batch_size(options.batch_size)


def train_strategy(
    options: ClassifierTrainingConfig, progress: Progress | None = None, should_stop: StopCheck | None = None
) -> dict[str, Any] | None:
    """Train and evaluate one strategy end to end; write checkpoints, metrics and figures; return the final metrics.

    With --fold-index only that fold is trained; the results are written (and returned) only by the run that finds
    every fold finished, else None. Every fold's record (its training state) keeps its out-of-fold validation
    predictions, so that whichever run writes the results chooses the pooled threshold (--operating-point) on all of
    them and stores it in every fold checkpoint before the served model is copied.

    `progress`, when given, is called after every epoch's training state is written, with {"strategy", "fold",
    "num_folds", "epochs"} and the epoch's history entry ("epoch" counts from 0). `should_stop` is asked before every
    epoch; True raises TrainingStopped, leaving the training state for --resume.

    Under torchrun every rank trains; rank 0 alone writes and returns the results (the others return None).
    A --repeat r > 0 writes everything into repeat-<r>/ of the model, results and figures folders.
    """
    check_environment(options)
    options = options.for_repeat()  # repeat r > 0: every output into repeat-<r>/
    schedule = options.schedule()
    ctx, device = start_distributed(options.cpu)
    strategy = options.strategy
    model_dir = Path(options.model_dir)
    only_fold = None if options.fold_index is None else options.fold_index + 1
    state_path = training_state_path(model_dir, strategy, options.arch, only_fold)
    state_config = resume_config(options)
    if ctx.enabled:  # a resume must use as many processes: the shards and RNG streams depend on it
        state_config["world_size"] = ctx.world_size
    folds_done: list[dict[str, Any]] = []  # {"fold", "history", "val_metrics", "holdout_metrics", ...} per fold
    current: dict[str, Any] | None = None  # the fold in progress (fold_state)
    if options.resume:
        folds_done, current = load_resume_state(state_path, state_config, model_dir, strategy, options.arch)
    elif state_path.exists() and ctx.is_main:
        log.warning("starting afresh; %s will be overwritten (use --resume to continue it)", state_path)
    seed_everything(options.seed)

    develop, holdout = develop_and_holdout(load_dataset(options.dataset, options.data_dir))
    assert_real_only(develop, "development set")
    assert_real_only(holdout, "hold-out test set")
    if options.max_images is not None:
        develop = subsample(develop, options.max_images, options.seed)
    pool = load_synthetic(options.synthetic_dir) if options.use_synthetic and not options.match_compute else None
    # The matched-compute control only counts the pool (its manifest's rows): it never loads a synthetic image.
    matched_pool_size = len(read_manifest(options.synthetic_dir)) if options.match_compute else 0
    folds = fold_indices(develop, options.k_folds, options.val_fraction, options.seed)
    log.info(
        "%s: %d development images (%s), %d hold-out, %d synthetic in the pool, %d fold(s), %s on %s",
        strategy,
        len(develop),
        develop.class_counts(),
        len(holdout),
        len(pool) if pool is not None else matched_pool_size,
        len(folds),
        options.arch,
        device,
    )

    config = classifier_config(
        options.arch,
        options.channels,
        options.image_size,
        strategy,
        options.weights,
        stem_pool=options.stem_pool,
        augmentation=options.augmentation,
    )
    holdout_loader = evaluation_loader(holdout, classifier_transform(config, train=False), options)
    shifted_sets = shifted_holdouts(holdout, options.severities(), options.seed) if ctx.is_main else {}
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
                progress(
                    {"strategy": strategy, "fold": fold, "num_folds": len(folds), "epochs": options.epochs, **entry}
                )

        hooks = FoldHooks(report, save_state, should_stop)
        saved = current if current is not None and current["fold"] == fold else None
        model, history, val_metrics = train_fold(
            fold, train_real, val, pool, config, options, schedule, device, hooks, saved, ctx, matched_pool_size
        )
        if not ctx.is_main:
            ctx.barrier()  # while rank 0 calibrates, evaluates and saves the fold model
            continue
        fold_config, validation_predictions = fit_fold_operating_point(model, train_real, val, config, options, device)
        holdout_metrics, holdout_operating, holdout_probabilities = holdout_evaluation(
            model, holdout_loader, device, Calibration.from_dict(fold_config["calibration"])
        )
        calibration, gate = (
            Calibration.from_dict(fold_config["calibration"]),
            PlausibilityGate.from_dict(fold_config["plausibility"]),
        )
        holdout_refused = gated_predictions(model, holdout, config, calibration, gate, device)["refused"]
        shifted = shifted_holdout_predictions(model, shifted_sets, config, calibration, gate, device)
        fold_path = fold_model_path(model_dir, fold, strategy, options.arch)
        save_classifier(fold_path, model, fold_config)
        folds_done.append(
            {
                "fold": fold,
                "history": history,
                "val_metrics": val_metrics,
                "holdout_metrics": holdout_metrics,
                "holdout_operating_point": holdout_operating,
                "holdout_probabilities": holdout_probabilities,
                "holdout_refused": holdout_refused,  # the gate's (false) refusals of hold-out images
                # MedMNIST-C shifts of the hold-out: per shift the same probabilities and the gate's refusals
                "shifted_probabilities": shifted,
                "calibration": fold_config["calibration"],
                "validation_predictions": validation_predictions,  # out-of-fold: for the pooled threshold
                "n_train_real": len(train_real),
                # The training fold's classes: real images, and the synthetic pool added to it (augmented adds all
                # of it every epoch; curriculum a per-epoch share; baseline and baseline-matched none).
                "class_mix": {
                    "real": class_mix(train_real.labels),
                    "synthetic": class_mix(pool.labels if pool is not None else []),
                },
                "model_sha256": sha256_file(fold_path),
            }
        )
        save_state(None)
        ctx.barrier()
    if not ctx.is_main:
        return None
    if only_fold is not None:
        folds_done = finished_fold_records(model_dir, len(folds), state_config, strategy, options.arch) or []
        if not folds_done:
            log.info(
                "%s fold %d of %d finished; the last fold to finish writes the results", strategy, only_fold, len(folds)
            )
            return None
    folds_done, operating_point = apply_operating_point(
        folds_done, options.operating_point, model_dir, strategy, options.arch
    )
    served = final_model(folds_done, options, develop, holdout, shifted_sets, device)
    return write_strategy_results(
        options, strategy, schedule, folds_done, develop, holdout, pool, served, operating_point
    )
