"""Log a finished experiment's work directory to MLflow and register each strategy's selected model.

    pneumonia track --work-dir runs/in-process --profile quick --dataset pneumoniamnist --data-dir data/pneumoniamnist

What `pneumonia experiment` (in this process) does at its end, for a work directory made another way: the
Kubernetes step Jobs' work volume (their last step, track-experiment), or a run made before tracking existed.
MLFLOW_TRACKING_URI (or --tracking-uri) says where; unset, <work-dir>/mlflow.db (pipeline/tracking.py).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from pipeline.tracking import TrackedRun, browse_hint, log_work_dir
from shared import layout


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`pneumonia track`: an in-process experiment's work directory (or a Kubernetes run's work volume) to MLflow."""
    parser.add_argument("--work-dir", required=True, help="the experiment's --work-dir (models/, results/, data/)")
    parser.add_argument("--run-id", default=None, help="the run's name in MLflow (default: time and profile)")
    parser.add_argument("--profile", default="", help="the profile it ran with (a logged param)")
    parser.add_argument("--dataset", default="", help="the dataset it ran on (a logged param)")
    parser.add_argument("--data-dir", default="", help="where that dataset lay (lineage)")
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else <work-dir>/mlflow.db)",
    )


def main(args: argparse.Namespace) -> int:
    root = Path(args.work_dir)
    run_id = args.run_id or time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + (f"-{args.profile}" if args.profile else "")
    tracked = TrackedRun(
        run_id=run_id,
        params={"profile": args.profile, "dataset": args.dataset},
        lineage={
            "dataset": str(Path(args.data_dir).resolve()) if args.data_dir else args.dataset,
            "gan_checkpoint": str(layout.generator_path(root / "models").resolve()),
            "synthetic": str((root / "data" / "synthetic").resolve()),
        },
    )
    uri = log_work_dir(root, tracked, args.tracking_uri).uri
    print(f"MLflow: run {run_id} and models pneumonia-<strategy> in {uri}")
    print(browse_hint(uri))
    return 0
