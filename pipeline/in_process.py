"""The experiment in this process: each planned step is the `pneumonia` subcommand a user would run by hand.

The subcommand runs through the CLI's registry, which imports a step's module only when that step runs.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from pipeline.cli import main as pneumonia
from pipeline.plan import PlannedStep, WorkDir, plan
from pipeline.steps import TIMINGS_FILE, Step, run_steps, timings_json
from pipeline.tracking import SERVED_ALIAS, TrackedRun, browse_hint, log_work_dir
from shared import layout
from shared.errors import PneumoniaError
from shared.images import atomic_write_bytes

log = logging.getLogger(__name__)


class InProcessDriver:
    """Runs each planned step as `pneumonia <argv>` in this process; outputs in the seed's layout under work-dir."""

    run_id = None

    def __init__(self, work: WorkDir, args: argparse.Namespace) -> None:
        self.work = work
        self.args = args
        self.synthetic_cleared = False
        self.tracking = ""

    def clear_synthetic(self) -> None:
        """Empty the synthetic folder once, before the run's first generate step: generate-synthetic merges into
        an existing manifest, so a previous run's images (another class, another count) would join this pool."""
        if not self.synthetic_cleared and self.work.synthetic.exists():
            log.info("removing the previous run's synthetic images from %s", self.work.synthetic)
            shutil.rmtree(self.work.synthetic)
        self.synthetic_cleared = True

    def steps_before(self) -> Sequence[Step]:
        return []

    def run(self, step: PlannedStep) -> None:
        if step.step == "generate":
            self.clear_synthetic()
        argv = step.argv
        log.info("experiment step %s: pneumonia %s", step.name, shlex.join(argv))
        if pneumonia(argv) != 0:
            raise PneumoniaError(f"experiment step {step.name!r} failed; see the messages above")

    def steps_after(self) -> Sequence[Step]:
        return [] if self.args.no_tracking else [("track", self.track)]

    def track(self) -> None:
        """Log the run to MLflow from the work directory; register each strategy's selected model (.pth)."""
        args = self.args
        tracked = TrackedRun(
            run_id=time.strftime("%Y%m%d-%H%M%S-", time.gmtime()) + args.profile,
            params={"profile": args.profile, "dataset": args.dataset, "repeats": args.repeats},
            lineage={
                "dataset": str(Path(args.data_dir).resolve()) if args.data_dir else args.dataset,
                "gan_checkpoint": str(self.work.generator.resolve()),
                "synthetic": str(self.work.synthetic.resolve()),
            },
        )
        self.tracking = log_work_dir(self.work.root, tracked).uri

    def save_timings(self, timings: dict[str, float]) -> None:
        atomic_write_bytes(self.work.results / TIMINGS_FILE, timings_json(timings))

    def metrics_dir(self) -> Path:
        return self.work.metrics

    def notes(self) -> list[str]:
        if not self.tracking:
            return []
        return [
            f"MLflow: the run and models pneumonia-<strategy> (the alias {SERVED_ALIAS!r} marks a served version; "
            f"this run serves none) in {self.tracking}; {browse_hint(self.tracking)}"
        ]

    def report(self) -> str:
        return str(self.work.analysis / layout.COMPARISON_REPORT)


def run_in_process(args: argparse.Namespace) -> int:
    """Each step as the `pneumonia` subcommand, called in this process."""
    return run_steps(InProcessDriver(WorkDir(Path(args.work_dir)), args), plan(args))
