"""run_steps: the experiment's planned steps in their one order, each timed, then the hold-out table and the report.

Both drivers implement `Driver` (pipeline.in_process: each step in this process; pipeline.through_services: each
step a call to a service); the order (pipeline.plan), the timings (experiment_timings.json) and the printout are
decided here once.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Protocol

from pipeline.plan import PlannedStep
from pipeline.profiles import STRATEGIES
from shared import layout

log = logging.getLogger(__name__)

TIMINGS_FILE = "experiment_timings.json"

Step = tuple[str, Callable[[], object]]


class Driver(Protocol):
    """How the steps of the experiment run; run_steps calls them in order."""

    run_id: str | None  # shown next to the report when the run has a name (runs in storage)

    def steps_before(self) -> Sequence[Step]:
        """The driver's own steps before the planned ones (e.g. uploading the dataset)."""
        ...

    def run(self, step: PlannedStep) -> None:
        """Run one planned step to its end; PneumoniaError when it failed."""
        ...

    def steps_after(self) -> Sequence[Step]:
        """The driver's own steps after the planned ones (e.g. serving the best model)."""
        ...

    def save_timings(self, timings: dict[str, float]) -> None:
        """Keep the timings as TIMINGS_FILE next to the results."""
        ...

    def metrics_dir(self) -> Path:
        """The local directory that holds each strategy's final metrics once the steps ran."""
        ...

    def notes(self) -> list[str]:
        """Lines printed between the hold-out table and the report."""
        ...

    def report(self) -> str:
        """Where the analysis report is (a path or a URI)."""
        ...


def run_steps(driver: Driver, planned: Sequence[PlannedStep]) -> int:
    """Run the planned steps with `driver` (between its own steps), save their timings, and print the hold-out
    metrics and where the report is."""
    steps = [
        *driver.steps_before(),
        *[(step.name, partial(driver.run, step)) for step in planned],
        *driver.steps_after(),
    ]
    timings: dict[str, float] = {}
    started = time.perf_counter()
    for name, step in steps:
        step_start = time.perf_counter()
        step()
        timings[name] = round(time.perf_counter() - step_start, 1)
        log.info("experiment step %s finished in %.1f s", name, timings[name])
    timings["total"] = round(time.perf_counter() - started, 1)
    driver.save_timings(timings)
    print("\nHold-out test metrics at each strategy's operating point (mean over fold models, 95% CI):")
    print(summary_table(driver.metrics_dir()))
    for line in driver.notes():
        print(line)
    run = f"run {driver.run_id}, " if driver.run_id else ""
    print(f"\nReport: {driver.report()}  ({run}total {timings['total']:.0f} s)")
    return 0


def timings_json(timings: dict[str, float]) -> bytes:
    """The timings as TIMINGS_FILE holds them."""
    return (json.dumps(timings, indent=2) + "\n").encode()


def summary_table(metrics_dir: Path) -> str:
    """Hold-out metrics of each strategy's model at its operating point (the threshold its rule chose; the analysis
    report has them at 0.5 and under shift too), mean and 95% CI over the fold models, and the served model's own."""
    rows = [f"{'strategy':<16} {'accuracy':>22} {'AUROC':>22} {'sensitivity':>22} {'specificity':>22}"]
    for strategy in STRATEGIES:
        path = metrics_dir / layout.final_metrics_name(strategy)
        if not path.is_file():
            rows.append(f"{strategy:<16} (missing {path.name})")
            continue
        final = json.loads(path.read_text())
        summary = final.get("holdout_operating_point_summary") or final["holdout_summary"]
        cells = []
        for metric in ("accuracy", "auroc", "sensitivity", "specificity"):
            mean, ci = summary["average"][metric], (summary.get("ci95") or {}).get(metric)
            cells.append(f"{mean:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{mean:.3f}")
        rows.append(f"{strategy:<16} " + " ".join(f"{c:>22}" for c in cells))
        served, operating = final.get("final_model"), final.get("holdout_operating_point")
        if served and operating:  # the strategy's served model itself (a fold-ensemble by default)
            values = [
                operating["accuracy"],
                final["holdout"]["auroc"],
                operating["sensitivity"],
                operating["specificity"],
            ]
            rows.append(f"{'  ' + served['kind']:<16} " + " ".join(f"{v:>22.3f}" for v in values))
    return "\n".join(rows)
