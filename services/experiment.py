"""Run the whole experiment: GAN -> synthetic images -> three classifier strategies with CV -> analysis.

Each step is the same `pneumonia` subcommand a user would run by hand, called in-process with the profile's flags.
`quick` fits in about 15 minutes on 2 CPU cores with PneumoniaMNIST (small images, subsets, few epochs, ResNet-18);
`full` keeps the seed's defaults (64 px GAN for 50 epochs, ResNet-50 at 224 px, 15 epochs, 5 folds) for GPU machines.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

from shared.datasets import DATASETS
from shared.errors import ConfigError, PneumoniaError
from shared.images import atomic_write_json

log = logging.getLogger(__name__)

STRATEGY_FLAGS = {
    "baseline": "",
    "augmented": "--use-synthetic",
    "curriculum": "--use-synthetic --use-curriculum",
}


@dataclass(frozen=True)
class Profile:
    """Flags per step, as shell words; paths, dataset and seed are added by `plan`."""

    gan: str
    generate: str
    classifier: str
    analyze: str


STEP_OVERRIDES = ("gan", "generate", "classifier", "analyze")

PROFILES: dict[str, Profile] = {
    # Sized from measured CPU costs (README, "Results: the quick profile"): ResNet-18 with the small-input stem
    # trains at roughly 30 images/s on 2 cores at 28 px, so every classifier pass is a seeded subset of the data;
    # the whole profile took 14 minutes there.
    "quick": Profile(
        gan="--image-size 32 --num-channels 1 --feature-maps-g 32 --feature-maps-d 32 --epochs 8 --batch-size 64 "
        "--workers 0 --vis-batch-size 64",
        generate="--num-images 300 --batch-size 100",
        # Small batches: on the CPU they cost the same per image and give 4x the optimizer steps of batch 64.
        classifier="--arch resnet18 --weights none --unfreeze --image-size 28 --channels 1 --epochs 3 --batch-size 16 "
        "--lr 0.002 --scheduler onecycle --k-folds 3 --max-images 680 --workers 0 "
        "--curriculum-schedule '0:0.0, 1:0.2, 2:0.33'",
        analyze="--arch resnet18 --num-ssim-real 50 --num-ssim-synth 100 --num-gradcam-samples 2 "
        "--num-reference-real 1000",
    ),
    # The seed's defaults (each subcommand's own defaults) for GPU machines.
    "full": Profile(gan="", generate="", classifier="", analyze=""),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick", help="how much compute to spend")
    parser.add_argument("--dataset", choices=DATASETS, default="pneumoniamnist", help="dataset source")
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("PNEUMONIA_DATA_DIR", "./data/processed"),
        help="dataset location (env PNEUMONIA_DATA_DIR)",
    )
    parser.add_argument(
        "--work-dir", default=".", help="root for data/synthetic, models/ and results/ (the seed's layout)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for every step")
    parser.add_argument("--cpu", action="store_true", help="force CPU even where CUDA is available")
    parser.add_argument(
        "--via-services",
        action="store_true",
        help="drive the experiment through the running services (addresses from PNEUMONIA_*_ADDRESS / _URL)",
    )
    parser.add_argument(
        "--local-services",
        action="store_true",
        help="with --via-services: first start every service as a local process on 127.0.0.1 (storage and logs "
        "under --work-dir), stop them at the end",
    )
    parser.add_argument("--run-id", default=None, help="with --via-services: run name in storage (default: time)")
    for step in STEP_OVERRIDES:
        parser.add_argument(
            f"--{step}-args",
            default="",
            metavar="FLAGS",
            help=f"extra flags for the {step} step, appended after the profile's (the last value of a flag wins)",
        )


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


def summary_table(metrics_dir: Path) -> str:
    """Hold-out metrics of each strategy's model, mean and 95% CI over the fold models."""
    rows = [f"{'strategy':<11} {'accuracy':>22} {'AUROC':>22} {'sensitivity':>22} {'specificity':>22}"]
    for strategy in STRATEGY_FLAGS:
        path = metrics_dir / f"{strategy}_final_metrics.json"
        if not path.is_file():
            rows.append(f"{strategy:<11} (missing {path.name})")
            continue
        summary = json.loads(path.read_text())["holdout_summary"]
        cells = []
        for metric in ("accuracy", "auroc", "sensitivity", "specificity"):
            mean, ci = summary["average"][metric], (summary.get("ci95") or {}).get(metric)
            cells.append(f"{mean:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{mean:.3f}")
        rows.append(f"{strategy:<11} " + " ".join(f"{c:>22}" for c in cells))
    return "\n".join(rows)


def main(args: argparse.Namespace) -> int:
    if args.local_services and not args.via_services:
        raise ConfigError("--local-services needs --via-services")
    if args.via_services:
        return main_via_services(args)
    return main_in_process(args)


def main_via_services(args: argparse.Namespace) -> int:
    """The experiment as calls to the services (services.orchestrator), optionally started here first."""
    from services.local_stack import LocalStack
    from services.orchestrator import ServiceEndpoints, run_experiment

    if not args.local_services:
        return run_experiment(args, ServiceEndpoints.from_env())
    stack = LocalStack(Path(args.work_dir))
    os.environ.update(stack.storage_env())  # the orchestrator uses the same LocalStore as the services
    with stack as endpoints:
        return run_experiment(args, endpoints)


def main_in_process(args: argparse.Namespace) -> int:
    """Each step as the `pneumonia` subcommand, called in this process."""
    from services.cli import main as pneumonia

    timings: dict[str, float] = {}
    started = time.perf_counter()
    for name, argv in plan(args):
        log.info("experiment step %s: pneumonia %s", name, " ".join(argv))
        step_start = time.perf_counter()
        if pneumonia(argv) != 0:
            raise PneumoniaError(f"experiment step {name!r} failed; see the messages above")
        timings[name] = round(time.perf_counter() - step_start, 1)
        log.info("experiment step %s finished in %.1f s", name, timings[name])
    timings["total"] = round(time.perf_counter() - started, 1)
    results = Path(args.work_dir) / "results"
    atomic_write_json(results / "experiment_timings.json", timings)
    print("\nHold-out test metrics (mean over fold models, 95% CI):")
    print(summary_table(results / "metrics"))
    print(f"\nReport: {results / 'analysis' / 'comparison_report.txt'}  (total {timings['total']:.0f} s)")
    return 0
