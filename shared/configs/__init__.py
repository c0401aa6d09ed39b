"""One typed config per step: the single place each option is defined (see shared.configs.base)."""

from shared.configs.analysis import AnalysisConfig
from shared.configs.base import StepConfig, option
from shared.configs.classifier import ClassifierTrainingConfig
from shared.configs.gan import GanTrainingConfig
from shared.configs.generation import GenerationConfig
from shared.configs.limits import MAX_SEED

STEP_CONFIGS: tuple[type[StepConfig], ...] = (
    GanTrainingConfig,
    GenerationConfig,
    ClassifierTrainingConfig,
    AnalysisConfig,
)

__all__ = [
    "MAX_SEED",
    "STEP_CONFIGS",
    "AnalysisConfig",
    "ClassifierTrainingConfig",
    "GanTrainingConfig",
    "GenerationConfig",
    "StepConfig",
    "option",
]
