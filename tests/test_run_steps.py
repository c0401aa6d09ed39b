"""run_steps: one order (the driver's own steps around the plan), one timings file, one printout, for both drivers."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from pipeline.cli import build_parser
from pipeline.in_process import InProcessDriver
from pipeline.plan import PlannedStep, WorkDir, plan
from pipeline.steps import TIMINGS_FILE, Step, run_steps
from shared import layout


class RecordingDriver(InProcessDriver):
    """The in-process driver's layout and timings file, with steps that only record that they ran."""

    def __init__(self, work: WorkDir) -> None:
        super().__init__(work, argparse.Namespace(no_tracking=True))
        self.ran: list[str] = []

    def steps_before(self) -> Sequence[Step]:
        return [("prepare", lambda: self.ran.append("prepare"))]

    def run(self, step: PlannedStep) -> None:
        self.ran.append(step.name)

    def steps_after(self) -> Sequence[Step]:
        return [("finish", lambda: self.ran.append("finish"))]

    def notes(self) -> list[str]:
        return ["a note"]


def test_steps_run_in_order_and_are_timed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser(["experiment"]).parse_args(
        ["experiment", "--work-dir", str(tmp_path), "--synthesize", "normal"]  # no dataset to count its minority
    )
    planned = plan(args)
    work = WorkDir(tmp_path)
    work.metrics.mkdir(parents=True)
    summary = {"average": {"accuracy": 0.9, "auroc": 0.95, "sensitivity": 0.8, "specificity": 0.85}}
    summary["ci95"] = {"auroc": [0.9, 0.99]}
    (work.metrics / layout.final_metrics_name("baseline")).write_text(json.dumps({"holdout_summary": summary}))
    driver = RecordingDriver(work)

    assert run_steps(driver, planned) == 0

    names = [step.name for step in planned]
    assert driver.ran == ["prepare", *names, "finish"]
    assert names == [
        "train-gan",
        "generate-synthetic",
        "train-classifier (baseline)",
        "train-classifier (baseline-matched)",
        "train-classifier (augmented)",
        "train-classifier (curriculum)",
        "analyze-results",
    ]
    timings = json.loads((work.results / TIMINGS_FILE).read_text())
    assert list(timings) == ["prepare", *names, "finish", "total"]
    assert all(seconds >= 0 for seconds in timings.values())
    out = capsys.readouterr().out
    assert "0.950 [0.900, 0.990]" in out and "augmented        (missing augmented_final_metrics.json)" in out
    assert "a note" in out
    assert f"Report: {work.analysis / layout.COMPARISON_REPORT}  (total 0 s)" in out


def test_a_rerun_starts_from_an_empty_synthetic_folder(tmp_path: Path) -> None:
    """generate-synthetic merges into an existing manifest: the in-process driver empties the folder once, before
    the first generate step, so a previous run's images cannot join this run's pool (the second class's step adds
    to the first's)."""
    work = WorkDir(tmp_path)
    work.synthetic.mkdir(parents=True)
    stale = work.synthetic / "synthetic_pneumonia_000000.png"
    stale.write_bytes(b"a previous run's image")
    driver = InProcessDriver(work, argparse.Namespace(no_tracking=True))
    driver.clear_synthetic()
    assert not work.synthetic.exists()
    work.synthetic.mkdir()
    first_class = work.synthetic / "synthetic_normal_000000.png"
    first_class.write_bytes(b"this run's first class")
    driver.clear_synthetic()  # the second generate step of the same run keeps the first one's images
    assert first_class.is_file()
