"""The experiment's profiles (how much compute each step gets) and its four classifier strategies.

A profile gives each step's typed config (shared.configs) its own defaults; paths, dataset, seed and device come from
the driver, and the user's --<step>-args flags win over both (pipeline.plan).
`quick` takes about 14 minutes through the services on 2 CPU cores with PneumoniaMNIST (small images, subsets,
few epochs, ResNet-18): a smoke run that cannot decide the question. `standard` uses every development image and
answers with power in under an hour on 2 CPU cores (README, "Results: the standard profile"). `full` keeps the
seed's defaults (64 px GAN for 50 epochs, ResNet-50 at 224 px, 15 epochs, 5 folds) for GPU machines. `smoke`
proves the plumbing in minutes (make compose-smoke) and decides nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.configs import AnalysisConfig, ClassifierTrainingConfig, GanTrainingConfig, GenerationConfig, StepConfig
from shared.configs.classifier import STRATEGIES as STRATEGY_NAMES

# The experiment's steps, by the name of their --<step>-args flag: the subcommand and the config each one runs.
STEP_COMMANDS: dict[str, str] = {
    "gan": "train-gan",
    "generate": "generate-synthetic",
    "classifier": "train-classifier",
    "analyze": "analyze-results",
}
STEP_CONFIGS: dict[str, type[StepConfig]] = {
    "gan": GanTrainingConfig,
    "generate": GenerationConfig,
    "classifier": ClassifierTrainingConfig,
    "analyze": AnalysisConfig,
}
STEP_OVERRIDES = tuple(STEP_COMMANDS)

# What each classifier strategy changes in the classifier config, keyed by the strategy the config names
# (ClassifierTrainingConfig.strategy), in shared.configs.classifier.STRATEGIES' order.
_SWITCHES: tuple[dict[str, bool], ...] = (
    {},
    {"use_synthetic": True, "match_compute": True},
    {"use_synthetic": True},
    {"use_synthetic": True, "use_curriculum": True},
)
STRATEGIES: dict[str, dict[str, bool]] = {
    ClassifierTrainingConfig(**switches).strategy: switches for switches in _SWITCHES
}
if tuple(STRATEGIES) != STRATEGY_NAMES:
    raise ValueError(f"pipeline strategies {tuple(STRATEGIES)} differ from shared's {STRATEGY_NAMES}")


@dataclass(frozen=True)
class Profile:
    """Values per step config that replace its field defaults (paths, dataset and seed are the driver's)."""

    gan: Mapping[str, Any] = field(default_factory=dict)
    generate: Mapping[str, Any] = field(default_factory=dict)
    classifier: Mapping[str, Any] = field(default_factory=dict)
    analyze: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for step, config in STEP_CONFIGS.items():
            unknown = set(self.defaults(step)) - set(config.model_fields)
            if unknown:
                raise ValueError(f"{config.__name__} has no option(s) {', '.join(sorted(unknown))}")

    def defaults(self, step: str) -> Mapping[str, Any]:
        """The profile's values for `step` (a key of STEP_CONFIGS)."""
        return getattr(self, step)


PROFILES: dict[str, Profile] = {
    # A smoke run, sized from measured CPU costs (README, "Results: the quick profile"): every classifier pass is a
    # seeded subset of the data for 3 epochs, so its report says that it cannot decide the question.
    "quick": Profile(
        gan={
            "image_size": 32,
            "num_channels": 1,
            "feature_maps_g": 32,
            "feature_maps_d": 32,
            "epochs": 8,
            "batch_size": 64,
            "workers": 0,
            "vis_batch_size": 64,
        },
        generate={"num_images": 300, "batch_size": 100},
        classifier={
            "arch": "resnet18",
            "weights": "none",
            "unfreeze": True,
            "image_size": 28,
            "channels": 1,
            "stem_pool": True,  # 2.5x faster (bench/classifier_training_speed.py)
            "augmentation": "strong",  # as the standard profile
            "epochs": 3,
            # Small batches: on the CPU they cost the same per image and give 4x the optimizer steps of batch 64.
            "batch_size": 16,
            "lr": 0.002,
            "scheduler": "onecycle",
            "k_folds": 3,
            "max_images": 680,
            "workers": 0,
            "curriculum_schedule": "0:0.0, 1:0.2, 2:0.33",
        },
        analyze={
            "arch": "resnet18",
            "num_ssim_real": 50,
            "num_ssim_synth": 100,
            "num_gradcam_samples": 2,
            "num_reference_real": 1000,
        },
    ),
    # Every development image, sized from bench/classifier_training_speed.py: ResNet-18 with the small-input stem
    # and its max-pool (14 x 14 maps at 28 px) trains at about 210 images/s on 2 cores, 2.5x the stem without it,
    # at about the same validation AUROC; 3 folds x 4 strategies x 10 epochs of 2,790 real (+ 1,000 synthetic or
    # resampled) images took 41 minutes of classifier jobs (46.5 minutes in all; README, "Results: the standard
    # profile"). The verdict's power comes from the image-by-image tests on the 1,047 hold-out images, not from the
    # number of folds.
    "standard": Profile(
        gan={
            "image_size": 32,
            "num_channels": 1,
            "feature_maps_g": 32,
            "feature_maps_d": 32,
            "epochs": 20,
            "batch_size": 64,
            "workers": 0,
            "vis_batch_size": 64,
        },
        generate={"num_images": 1000, "batch_size": 250},
        classifier={
            "arch": "resnet18",
            "weights": "none",
            "unfreeze": True,
            "image_size": 28,
            "channels": 1,
            "stem_pool": True,
            # More robust under MedMNIST-C's shifts at about the same speed (bench/classifier_recipe.py, 2026-12-07)
            "augmentation": "strong",
            "epochs": 10,
            "batch_size": 64,
            "lr": 0.003,
            "scheduler": "onecycle",
            "k_folds": 3,
            "workers": 0,
            # rising to augmented's share: 1,000 of 3,790 images per epoch
            "curriculum_schedule": "0:0.0, 3:0.13, 6:0.26",
        },
        analyze={
            "arch": "resnet18",
            "num_ssim_real": 100,
            "num_ssim_synth": 300,
            "num_gradcam_samples": 3,
            "num_reference_real": 2000,
        },
    ),
    # The seed's defaults (each step config's own defaults) for GPU machines.
    "full": Profile(),
    # Plumbing only, in a few minutes (make compose-smoke, on phantom data): every step runs through every service
    # with the least work that still exercises it. Its numbers mean nothing.
    "smoke": Profile(
        gan={
            "image_size": 32,
            "num_channels": 1,
            "feature_maps_g": 16,
            "feature_maps_d": 16,
            "epochs": 1,
            "batch_size": 32,
            "max_images": 120,
            "workers": 0,
            "vis_batch_size": 16,
        },
        generate={"num_images": 48, "batch_size": 32},
        classifier={
            "arch": "resnet18",
            "weights": "none",
            "unfreeze": True,
            "image_size": 16,
            "channels": 1,
            "stem_pool": True,
            "epochs": 1,
            "batch_size": 16,
            "k_folds": 2,
            "max_images": 100,
            "workers": 0,
        },
        analyze={
            "arch": "resnet18",
            "num_ssim_real": 8,
            "num_ssim_synth": 16,
            "num_gradcam_samples": 1,
            "num_reference_real": 100,
        },
    ),
}
