"""ClassifierTrainingConfig: the options of `pneumonia train-classifier` (services.trainer.train_classifier)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pneumonia_proto.v1 import trainer_pb2
from pydantic import field_validator, model_validator

from shared import layout
from shared.configs.base import StepConfig, option
from shared.configs.limits import (
    MAX_BATCH_SIZE,
    MAX_EPOCHS,
    MAX_FOLDS,
    MAX_IMAGE_SIZE,
    MAX_IMAGES,
    MAX_SEED,
    MAX_WORKERS,
)
from shared.curriculum import Schedule, parse_schedule
from shared.datasets import DATASETS
from shared.errors import ConfigError
from shared.models.classifier import ARCHS
from shared.operating_rule import OperatingRule


def parse_severities(text: str) -> tuple[int, ...]:
    """'3' -> (3,), '1, 3,5' -> (1, 3, 5), 'none' -> (): sorted, each once, each in 1-5."""
    if text.strip().lower() == "none":
        return ()
    try:
        values = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise ValueError(f"expected comma-separated severities 1-5 or 'none', got {text!r}") from None
    if not values or not all(1 <= value <= 5 for value in values):
        raise ValueError(f"expected comma-separated severities 1-5 or 'none', got {text!r}")
    return tuple(values)


# Every classifier strategy, in report order: the one list the pipeline, the analyzer and the drivers use.
# baseline-matched is the matched-compute control of augmented (--match-compute).
STRATEGIES = ("baseline", "baseline-matched", "augmented", "curriculum")


class ClassifierTrainingConfig(StepConfig):
    """Train the pneumonia classifier with one strategy and patient-level cross-validation."""

    request_type: ClassVar = trainer_pb2.StartClassifierJobRequest
    request_only: ClassVar = frozenset(
        {"dataset", "synthetic", "output_prefix", "weights_checkpoint", "model_archive_name", "idempotency_key"}
    )

    data_dir: str = option("./data/processed", "dataset location", kind="layout")
    synthetic_dir: str = option("./data/synthetic", "synthetic images (generate-synthetic)", kind="layout")
    model_dir: str = option("./models", "where classifier checkpoints go", kind="layout")
    results_dir: str = option("./results/metrics", "where the metrics JSON files go", kind="layout")
    figures_dir: str = option("./results/figures", "where the plots go", kind="layout")
    epochs: int = option(15, "training epochs per fold", ge=1, le=MAX_EPOCHS)
    batch_size: int = option(32, "mini-batch size", ge=1, le=MAX_BATCH_SIZE)
    lr: float = option(0.001, "learning rate (max lr with --scheduler onecycle)", gt=0)
    unfreeze: bool = option(False, "train the whole network, not only the head")
    k_folds: int = option(5, "cross-validation folds (1: one train/val split)", ge=1, le=MAX_FOLDS)
    workers: int = option(4, "data loader worker processes", kind="local", ge=0, le=MAX_WORKERS)
    use_synthetic: bool = option(False, "add synthetic images to the training folds")
    use_curriculum: bool = option(False, "raise the synthetic share per epoch (needs --use-synthetic)")
    match_compute: bool = option(
        False,
        "the matched-compute control (needs --use-synthetic): every synthetic sample an epoch would draw is replaced "
        "by a real training image resampled with replacement (seeded), so the run takes the same optimizer steps on "
        "as many images per epoch without seeing a synthetic image (only the pool's manifest is read, for its size)",
    )
    curriculum_schedule: str = option(
        "0:0.0, 5:0.25, 10:0.5",
        "EPOCH:RATIO, ...: share of an epoch's samples that are synthetic, from that 0-based epoch on",
    )
    cpu: bool = option(False, "force CPU even where CUDA is available")
    dataset: Literal[DATASETS] = option("rsna", "dataset source", kind="layout")  # type: ignore[valid-type]
    arch: Literal[ARCHS] = option("resnet50", "ResNet architecture")  # type: ignore[valid-type]
    weights: str = option(
        "imagenet", "'imagenet' (local torch hub cache only), 'none' or a checkpoint path (not through the services)"
    )
    image_size: int = option(224, "input size (<= 64: small-input stem)", ge=8, le=MAX_IMAGE_SIZE)
    channels: Literal[1, 3] = option(3, "input channels")
    stem_pool: bool = option(
        False,
        "with the small-input stem (--image-size <= 64), keep ResNet's 3x3 stride-2 max-pool after it: 14 x 14 "
        "feature maps at 28 px instead of 28 x 28, about 2.5x faster to train on a CPU "
        "(bench/classifier_training_speed.py)",
    )
    augmentation: Literal["light", "strong"] = option(
        "light",
        "training augmentation of real images (shared.models.classifier.classifier_transform). light: small rotations, "
        "shifts and zooms; strong: those, random crops and acquisition changes (brightness, contrast, gamma, noise), "
        "more robust under MedMNIST-C's shifts at 0.002 of hold-out AUROC (bench/classifier_recipe.py)",
    )
    seed: int = option(0, "seed for folds, subsets, initialisation and sampling", ge=0, le=MAX_SEED)
    repeat: int = option(
        0,
        "which repeat of the experiment's comparison this run is (pneumonia experiment --repeats, each repeat with "
        "its own --seed): 0 writes into --model-dir, --results-dir and --figures-dir, r > 0 into their repeat-<r>/ "
        "subfolders, where the analysis finds every repeat",
        ge=0,
        le=1000,
    )
    max_images: int | None = option(
        None, "seeded stratified patient-level subset of the development set", ge=1, le=MAX_IMAGES
    )
    val_fraction: float = option(0.15, "share of patients for validation when --k-folds 1", gt=0, lt=1)
    class_balance: Literal["weighted-loss", "sampler", "none"] = option(
        "weighted-loss", "counter class imbalance with inverse class frequencies of the real training fold"
    )
    weight_decay: float | None = option(
        None,
        "the optimizer's weight decay (Adam: L2 penalty; AdamW with --scheduler onecycle: decoupled decay); "
        "unset: the optimizer's own default (Adam 0, AdamW 0.01)",
        ge=0,
    )
    scheduler: Literal["none", "onecycle"] = option(
        "none", "none: Adam at --lr (the seed); onecycle: AdamW + OneCycleLR with max lr --lr"
    )
    fold_index: int | None = option(
        None,
        "train only fold FOLD_INDEX + 1 (0-based, e.g. a Kubernetes Indexed Job's completion index); the "
        "strategy's results are written by whichever fold finishes last",
        kind="local",
        ge=0,
        lt=MAX_FOLDS,
    )
    operating_rule: str = option(
        "prevalence",
        "how the decision threshold is chosen on validation predictions (shared.calibration): prevalence[:P], the "
        "Bayes rule for accuracy at pneumonia prevalence P (default: the validation data's own, i.e. 0.5 on the "
        "calibrated probability); sensitivity:S, the highest threshold reaching sensitivity S; youden, Youden's J. "
        "Named with the threshold in every answer, model card and report",
    )
    operating_point: Literal["pooled", "per-fold"] = option(
        "pooled",
        "where the decision threshold is chosen. pooled: one threshold for every fold model and the served model, "
        "chosen on the out-of-fold validation predictions of all folds together (each image scored by the fold "
        "model that did not train on it, after that model's temperature; --k-folds 1: the validation split); "
        "per-fold: each fold model's own validation fold. The temperature is always fitted per fold on its "
        "validation fold, and the hold-out never enters either",
        kind="local",
    )
    final_model: Literal["fold-ensemble", "best-fold"] = option(
        "fold-ensemble",
        "the strategy's served model. fold-ensemble: all fold models as one, averaging their calibrated "
        "probabilities, so it has learned from every development image, with its own threshold (the operating rule "
        "on the pooled out-of-fold predictions) and plausibility gate (services.trainer.classification.final_model); "
        "best-fold: the fold model with the best validation AUROC",
        kind="local",
    )
    shift_severities: str = option(
        "3",
        "MedMNIST-C severities (1-5, comma-separated) at which every fold model is also scored on corrupted copies "
        "of the hold-out, each of MedMNIST-C's corruptions for chest X-rays at each severity (shared.corruptions): "
        "the estimate under shift in every report; 'none' skips it",
    )
    resume: bool = option(
        False,
        "continue the run in --model-dir from its last epoch (same options): finished folds are not retrained",
        kind="local",
    )

    @field_validator("shift_severities")
    @classmethod
    def _severities(cls, value: str) -> str:
        parse_severities(value)
        return value

    @field_validator("operating_rule")
    @classmethod
    def _rule(cls, value: str) -> str:
        return str(OperatingRule.parse(value))

    def rule(self) -> OperatingRule:
        """The operating rule the decision threshold follows."""
        return OperatingRule.parse(self.operating_rule)

    def severities(self) -> tuple[int, ...]:
        """The MedMNIST-C severities the hold-out is shifted at (empty: no shifted estimate)."""
        return parse_severities(self.shift_severities)

    @model_validator(mode="after")
    def _consistent(self) -> ClassifierTrainingConfig:
        if self.use_curriculum and not self.use_synthetic:
            raise ConfigError("--use-curriculum schedules synthetic images: add --use-synthetic")
        if self.match_compute and not self.use_synthetic:
            raise ConfigError("--match-compute replaces the synthetic samples of a run: add --use-synthetic")
        if self.fold_index is not None and not self.fold_index < self.k_folds:
            raise ConfigError(
                f"--fold-index must be in 0..{self.k_folds - 1} (--k-folds {self.k_folds}), got {self.fold_index}"
            )
        self.schedule()  # a malformed schedule fails now
        return self

    @property
    def sampling(self) -> str:
        """Whose samples per epoch this run draws: baseline (real only), augmented (--use-synthetic: the whole pool
        every epoch) or curriculum (--use-curriculum: the schedule's share)."""
        if self.use_curriculum:
            return "curriculum"
        return "augmented" if self.use_synthetic else "baseline"

    @property
    def strategy(self) -> str:
        """The run's name: its sampling, or with --match-compute the matched control of it: baseline-matched for
        augmented (one of STRATEGIES), baseline-matched-curriculum for curriculum (not run by the experiment)."""
        if not self.match_compute:
            return self.sampling
        return "baseline-matched" if self.sampling == "augmented" else f"baseline-matched-{self.sampling}"

    def for_repeat(self) -> ClassifierTrainingConfig:
        """This config with its output folders moved into repeat-<r>/ for a --repeat r > 0 (itself for 0)."""
        if self.repeat == 0:
            return self
        sub = layout.repeat_dir_name(self.repeat)
        return self.model_copy(
            update={name: str(Path(getattr(self, name)) / sub) for name in ("model_dir", "results_dir", "figures_dir")}
        )

    def schedule(self) -> Schedule | None:
        """The curriculum schedule (None without --use-curriculum)."""
        return parse_schedule(self.curriculum_schedule) if self.use_curriculum else None

    def to_proto(self, message):  # type: ignore[no-untyped-def]
        """As StepConfig.to_proto; a --weights path cannot travel (send weights_checkpoint instead)."""
        if self.weights not in ("imagenet", "none"):
            raise ConfigError("--weights PATH is not supported through the services; use imagenet or none")
        return super().to_proto(message)
