"""Train the pneumonia classifier with one strategy and patient-level cross-validation.

Strategies: baseline (real images only); augmented (--use-synthetic: real + every synthetic image, each epoch);
curriculum (--use-synthetic --use-curriculum: the synthetic share of each epoch's samples follows
--curriculum-schedule). The hold-out test set is fixed first (patient-level, seeded); the rest is split into k
patient-level folds (k = 1: one train/validation split). Synthetic images only ever enter training folds.
Each fold model is evaluated on its validation fold and on the hold-out; the fold model with the best validation
AUROC becomes the strategy's model. Each fold model's temperature is fitted on its validation fold; the decision
threshold (--operating-point pooled, the default) is chosen once on the pooled out-of-fold validation predictions of
all fold models and stored in every fold checkpoint, hence in the served model; the hold-out is reported at 0.5 and
at that threshold.

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

from services.trainer.classification.data import assert_real_only, subsample
from services.trainer.classification.results import format_summary
from services.trainer.classification.strategy import check_environment, train_strategy
from shared.configs import ClassifierTrainingConfig
from shared.distributed import from_env
from shared.distributed import stop as stop_distributed

__all__ = ["add_arguments", "assert_real_only", "check_environment", "main", "subsample", "train_strategy"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    ClassifierTrainingConfig.add_arguments(parser)


def main(args: argparse.Namespace) -> int:
    options = ClassifierTrainingConfig.from_args(args)
    try:
        final = train_strategy(options)
    finally:
        stop_distributed()
    if not from_env().is_main:
        return 0
    if final is None:
        assert options.fold_index is not None
        print(
            f"fold {options.fold_index + 1} of {options.k_folds} done; the results follow when every fold has finished"
        )
        return 0
    print(format_summary(final))
    return 0
