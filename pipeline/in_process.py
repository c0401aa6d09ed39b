"""The experiment in this process: each step is the `pneumonia` subcommand a user would run by hand.

`plan` turns the profile and the user's --<step>-args into each step's argv in the seed's directory layout under
--work-dir (the Kubernetes Jobs run the same argv; tests/test_deployment.py compares them).
"""

from __future__ import annotations

import argparse
import logging
import shlex
from collections.abc import Sequence
from pathlib import Path

from pipeline.cli import main as pneumonia
from pipeline.profiles import PROFILES, STRATEGY_FLAGS
from pipeline.steps import TIMINGS_FILE, Step, run_steps, timings_json
from shared.errors import PneumoniaError
from shared.images import atomic_write_bytes

log = logging.getLogger(__name__)


def plan(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    """The experiment as a list of (step name, `pneumonia` argv), in the seed's directory layout under work-dir."""
    profile, work, q = PROFILES[args.profile], Path(args.work_dir), shlex.quote
    models, results, synthetic = work / "models", work / "results", work / "data" / "synthetic"
    metrics, figures, generator = results / "metrics", results / "figures", models / "gan" / "generator_final.pth"
    data = f"--dataset {args.dataset} --data-dir {q(str(args.data_dir))}"
    outputs = f"--model-dir {q(str(models))} --results-dir {q(str(metrics))} --figures-dir {q(str(figures))}"
    commands = [
        ("train-gan", "gan", f"train-gan {data} {outputs} --output-dir {q(str(results))}"),
        (
            "generate-synthetic",
            "generate",
            f"generate-synthetic --model-path {q(str(generator))} --output-dir {q(str(synthetic))}",
        ),
        *[
            (
                f"train-classifier ({strategy})",
                "classifier",
                f"train-classifier {data} {outputs} --synthetic-dir {q(str(synthetic))} {flags}",
            )
            for strategy, flags in STRATEGY_FLAGS.items()
        ],
        (
            "analyze-results",
            "analyze",
            f"analyze-results {data} --metrics-dir {q(str(metrics))} "
            f"--analysis-dir {q(str(results / 'analysis'))} --model-dir {q(str(models))} "
            f"--synthetic-dir {q(str(synthetic))} --gan-model-path {q(str(generator))}",
        ),
    ]
    common = ["--seed", str(args.seed), *(["--cpu"] if args.cpu else [])]
    return [
        (
            name,
            [
                *shlex.split(command),
                *shlex.split(getattr(profile, step)),
                *shlex.split(getattr(args, f"{step}_args")),
                *common,
            ],
        )
        for name, step, command in commands
    ]


class InProcessDriver:
    """Runs each planned step as `pneumonia <argv>` in this process; outputs in the seed's layout under work-dir."""

    run_id = None

    def __init__(self, args: argparse.Namespace) -> None:
        self.argv = dict(plan(args))
        self.results = Path(args.work_dir) / "results"

    def run(self, name: str) -> None:
        argv = self.argv[name]
        log.info("experiment step %s: pneumonia %s", name, " ".join(argv))
        if pneumonia(argv) != 0:
            raise PneumoniaError(f"experiment step {name!r} failed; see the messages above")

    def steps_before(self) -> Sequence[Step]:
        return []

    def train_gan(self) -> None:
        self.run("train-gan")

    def generate_synthetic(self) -> None:
        self.run("generate-synthetic")

    def train_classifier(self, strategy: str) -> None:
        self.run(f"train-classifier ({strategy})")

    def analyze_results(self) -> None:
        self.run("analyze-results")

    def steps_after(self) -> Sequence[Step]:
        return []

    def save_timings(self, timings: dict[str, float]) -> None:
        atomic_write_bytes(self.results / TIMINGS_FILE, timings_json(timings))

    def metrics_dir(self) -> Path:
        return self.results / "metrics"

    def notes(self) -> list[str]:
        return []

    def report(self) -> str:
        return str(self.results / "analysis" / "comparison_report.txt")


def run_in_process(args: argparse.Namespace) -> int:
    """Each step as the `pneumonia` subcommand, called in this process."""
    return run_steps(InProcessDriver(args))
