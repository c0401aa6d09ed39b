"""Run the whole experiment: GAN -> synthetic images -> four classifier strategies with CV -> analysis.

In this process by default: each step is the same `pneumonia` subcommand a user would run by hand, called with
its config's flags (pipeline.plan, pipeline.in_process). With --via-services each step is a call to the running services
(pipeline.through_services), which --local-services first starts as local processes (pipeline.local_stack).
With --dataset pneumoniamnist, a --data-dir without pneumoniamnist.npz first gets it downloaded with medmnist.
The profiles (how much compute each step gets: quick, standard, full) are in pipeline.profiles.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from pipeline.endpoints import ServiceEndpoints
from pipeline.in_process import run_in_process
from pipeline.local_stack import LocalStack
from pipeline.profiles import PROFILES, STEP_OVERRIDES
from pipeline.synthesis import SYNTHESIZE
from pipeline.through_services import run_through_services
from shared.datasets import DATASETS
from shared.errors import ConfigError


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
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        metavar="R",
        help="repeat the comparison R times: every strategy trained with seeds SEED, SEED+1, ..., SEED+R-1 (folds, "
        "initialisation, sampling), paired by seed; the GAN and its synthetic images are shared; the analysis "
        "uses every repeat (see services/analyzer/repeats.py)",
    )
    parser.add_argument(
        "--synthesize",
        choices=SYNTHESIZE,
        default="minority",
        help="which class(es) the conditional GAN synthesizes: the development split's minority class, pneumonia, "
        "normal, or balanced (half of --num-images each); see pipeline/synthesis.py",
    )
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
    parser.add_argument(
        "--no-tracking",
        action="store_true",
        help="do not log the run to MLflow nor register its models (pipeline/tracking.py)",
    )
    for step in STEP_OVERRIDES:
        parser.add_argument(
            f"--{step}-args",
            default="",
            metavar="FLAGS",
            help=f"extra flags for the {step} step, appended after the profile's (the last value of a flag wins)",
        )


def main(args: argparse.Namespace) -> int:
    if args.repeats < 1:
        raise ConfigError(f"--repeats must be at least 1, got {args.repeats}")
    if args.local_services and not args.via_services:
        raise ConfigError("--local-services needs --via-services")
    if args.dataset == "pneumoniamnist":  # before any service starts or any run directory is made
        # Imported here: the parser of `pneumonia experiment` loads no other subcommand's module (download-dataset).
        from shared.datasets.download import ensure_pneumoniamnist

        ensure_pneumoniamnist(Path(args.data_dir))
    if not args.via_services:
        return run_in_process(args)
    if not args.local_services:
        return run_through_services(args, ServiceEndpoints.from_env())
    stack = LocalStack(Path(args.work_dir))
    os.environ.update(stack.storage_env())  # the driver uses the same LocalStore as the services
    with stack as endpoints:
        return run_through_services(args, endpoints)
