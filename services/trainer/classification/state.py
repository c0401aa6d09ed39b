"""The resumable state of a strategy's run: what it stores, where, and the checks before a resume."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from shared import layout
from shared.checkpoints import load_checkpoint
from shared.configs import ClassifierTrainingConfig
from shared.errors import CheckpointError
from shared.images import sha256_file
from shared.runtime import set_rng_state

log = logging.getLogger(__name__)

TRAINING_STATE = "classifier-training-state"
# Options that do not change what is trained: a resumed run may give other values.
# fold_index differs between the pods of one cross-validation, so it is not part of what a run trains either.
# operating_point is applied to the stored fold records when the results are written.
RESUME_MAY_CHANGE = frozenset(
    {
        "resume", "workers", "cpu", "model_dir", "results_dir", "figures_dir", "verbose", "fold_index",
        "operating_point", "final_model",
    }
)  # fmt: skip
# In a fold checkpoint rewritten with the run's operating point: the sha256 of the checkpoint its fold's training wrote.
TRAINED_SHA256 = "trained_checkpoint_sha256"


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


def run_config(options: ClassifierTrainingConfig) -> dict[str, Any]:
    """Every option (JSON values only)."""
    return options.model_dump(mode="json")


def resume_config(options: ClassifierTrainingConfig) -> dict[str, Any]:
    """The options that define what a run trains (stored in its training state; a resume must repeat them)."""
    config = {k: v for k, v in run_config(options).items() if k not in RESUME_MAY_CHANGE}
    config["data_dir"] = str(Path(options.data_dir).resolve())
    config["synthetic_dir"] = str(Path(options.synthetic_dir).resolve()) if options.use_synthetic else None
    if options.weights not in ("imagenet", "none"):
        config["weights"] = str(Path(options.weights).resolve())
    return config


def training_state_path(model_dir: Path, strategy: str, arch: str, fold: int | None = None) -> Path:
    """The run's resumable state; a single-fold run (--fold-index) has its own per fold."""
    return model_dir / layout.training_state_name(strategy, arch, fold)


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
    return model_dir / layout.fold_model_name(fold, strategy, arch)


def fold_model_intact(path: Path, trained_sha256: str) -> bool:
    """True when `path` holds the fold model its training wrote (sha256 `trained_sha256`), or that model rewritten
    with the run's operating point (its config names that sha256)."""
    if not path.is_file():
        return False
    if sha256_file(path) == trained_sha256:
        return True
    try:
        config = load_checkpoint(path, "classifier")["config"]
    except CheckpointError:
        return False
    return isinstance(config, dict) and config.get(TRAINED_SHA256) == trained_sha256


def check_resumable(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    """Raise CheckpointError if the saved run was started with options that differ from the current ones (an option
    added since the state was saved matches while it keeps its default)."""
    defaults = {name: f.default for name, f in ClassifierTrainingConfig.model_fields.items() if not f.is_required()}
    differing = sorted(
        k for k in saved.keys() | current.keys() if saved.get(k, defaults.get(k)) != current.get(k, defaults.get(k))
    )
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
        if not fold_model_intact(fold_path, record["model_sha256"]):
            raise CheckpointError(
                f"cannot resume from {path}: fold {record['fold']}'s model {fold_path} is missing or was replaced"
            )
    log.info("resuming %s from %s: %d fold(s) finished", strategy, path, len(state["folds_done"]))
    return list(state["folds_done"]), state["current"]
