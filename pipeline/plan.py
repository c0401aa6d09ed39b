"""The experiment as a list of steps, each with its typed config, in the seed's directory layout under --work-dir.

A step's config starts from its config class's defaults, replaced by the profile's values, then by the driver's
layout (paths, dataset) and the strategy's switches; the user's --<step>-args flags win over those, and the
experiment's own --seed and --cpu over everything. The in-process driver runs `pneumonia <step.argv>`, the
Kubernetes Jobs run the same argv (tests/test_deployment.py compares them), and the through-services driver sends
the config's request fields.
"""

from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.profiles import PROFILES, STEP_COMMANDS, STEP_CONFIGS, STRATEGIES
from pipeline.synthesis import synthesis_counts
from shared import layout
from shared.configs import GenerationConfig, StepConfig
from shared.datasets import load_dataset
from shared.errors import ConfigError
from shared.splits import develop_and_holdout


@dataclass(frozen=True)
class PlannedStep:
    """One step of the experiment: its name in the logs and timings, which step it is, and its config."""

    name: str  # "train-gan", "train-classifier (baseline)", ...
    step: str  # a key of STEP_CONFIGS: gan, generate, classifier, analyze
    config: Any  # an instance of STEP_CONFIGS[step]

    @property
    def command(self) -> str:
        return STEP_COMMANDS[self.step]

    @property
    def argv(self) -> list[str]:
        """The `pneumonia` command line that runs this step."""
        return [self.command, *self.config.to_argv()]


@dataclass(frozen=True)
class WorkDir:
    """The seed's directory layout under --work-dir, where the in-process experiment reads and writes."""

    root: Path

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def synthetic(self) -> Path:
        return self.root / "data" / "synthetic"

    @property
    def metrics(self) -> Path:
        return self.results / "metrics"

    @property
    def figures(self) -> Path:
        return self.results / "figures"

    @property
    def analysis(self) -> Path:
        return self.results / "analysis"

    @property
    def generator(self) -> Path:
        return layout.generator_path(self.models)


def step_config(args: argparse.Namespace, step: str, seed_offset: int = 0, **values: Any) -> StepConfig:
    """`step`'s config for the experiment `args`: the profile's values, then `values` (layout, strategy), then the
    user's --<step>-args, then --seed (plus `seed_offset`: a repeat's) and --cpu. ConfigError for a flag or value the
    step does not accept."""
    seed = str(args.seed + seed_offset)
    user = [*shlex.split(getattr(args, f"{step}_args")), "--seed", seed, *(["--cpu"] if args.cpu else [])]
    return STEP_CONFIGS[step].from_argv(user, **{**PROFILES[args.profile].defaults(step), **values})


def develop_labels(args: argparse.Namespace) -> np.ndarray:
    """The labels of the experiment's development split (never the hold-out's)."""
    develop, _ = develop_and_holdout(load_dataset(args.dataset, args.data_dir))
    return develop.labels


def generate_steps(args: argparse.Namespace, work: WorkDir) -> list[PlannedStep]:
    """One generate step per class that --synthesize asks for (pipeline.synthesis), each with its count, all
    into one synthetic folder; "generate-synthetic (<class>)" when there are two."""
    base = step_config(args, "generate", model_path=str(work.generator), output_dir=str(work.synthetic))
    assert isinstance(base, GenerationConfig)
    if base.label is not None:
        raise ConfigError("choose the synthesized class(es) with --synthesize, not --generate-args --label")
    counts = synthesis_counts(args.synthesize, base.num_images, lambda: develop_labels(args))
    return [
        PlannedStep(
            "generate-synthetic" if len(counts) == 1 else f"generate-synthetic ({label})",
            "generate",
            base.model_copy(update={"label": label, "num_images": count}),
        )
        for label, count in counts.items()
    ]


def classifier_steps(
    args: argparse.Namespace, work: WorkDir, data: dict[str, str], outputs: dict[str, str]
) -> list[PlannedStep]:
    """Every strategy once per repeat (--repeats R): repeat r trains with --seed (the experiment's) + r, so its
    folds, initialisation and sampling are its own and the same for every strategy of that repeat (the strategies
    are paired by seed), into the repeat-<r>/ subfolders (train-classifier --repeat) for r > 0."""
    repeats = args.repeats
    return [
        PlannedStep(
            f"train-classifier ({strategy})" if repeats == 1 else f"train-classifier ({strategy}, repeat {r + 1})",
            "classifier",
            step_config(
                args,
                "classifier",
                seed_offset=r,
                **data,
                **outputs,
                synthetic_dir=str(work.synthetic),
                repeat=r,
                **switches,
            ),
        )
        for r in range(repeats)
        for strategy, switches in STRATEGIES.items()
    ]


def plan(args: argparse.Namespace) -> list[PlannedStep]:
    """The experiment's steps in their order: a conditional GAN, synthetic images of the class(es) --synthesize
    chooses, one classifier per strategy (and repeat), analysis."""
    work = WorkDir(Path(args.work_dir))
    data = {"dataset": args.dataset, "data_dir": str(args.data_dir)}
    outputs = {"model_dir": str(work.models), "results_dir": str(work.metrics), "figures_dir": str(work.figures)}
    gan = step_config(args, "gan", **data, **outputs, output_dir=str(work.results), conditional=True)
    return [
        PlannedStep("train-gan", "gan", gan),
        *generate_steps(args, work),
        *classifier_steps(args, work, data, outputs),
        PlannedStep(
            "analyze-results",
            "analyze",
            step_config(
                args,
                "analyze",
                **data,
                metrics_dir=str(work.metrics),
                analysis_dir=str(work.analysis),
                model_dir=str(work.models),
                synthetic_dir=str(work.synthetic),
                gan_model_path=str(work.generator),
            ),
        ),
    ]
