"""The experiments' reports in the results bucket, as the page shows them.

Each run of `pneumonia experiment --via-services` (and `make experiment-local`) writes its analysis under
runs/<run>/analysis/ of the results bucket (services.analyzer; shared.layout names the files):

    comparison_report.txt       the text report
    *.png                       the analysis figures
    dataset_card.md             the dataset card (shared.cards)
    model_cards/<strategy>.md   each strategy's model card
    analysis_summary.json       its inputs (the architecture) and outputs

The latest run is the one with the greatest run id among those with a report: the orchestrator's ids start with
the UTC date and time (YYYYMMDD-HHMMSS-<profile>), so that is the newest. The served model is found by its
model_version, the first 12 hex digits of its checkpoint's sha256 (shared.serving.archive): the checkpoint
runs/<run>/classifiers/<strategy>_<arch>.pth in the models bucket whose stored sha256 starts with it. Its
operating point is the calibration threshold in runs/<run>/classifiers/metrics/<strategy>_final_metrics.json (the
same the checkpoint carries, which the handler applies).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

from shared import layout
from shared.storage import NotFoundError, ObjectStore, StorageError

log = logging.getLogger(__name__)

RUNS_PREFIX = "runs/"
ANALYSIS = "analysis"
REPORT_KEY = re.compile(rf"^{RUNS_PREFIX}([^/]+)/{ANALYSIS}/{re.escape(layout.COMPARISON_REPORT)}$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # a run id, figure or strategy name the page may ask for
VERSION = re.compile(r"^[0-9a-f]{6,64}$")
MAX_RUNS_SEARCHED = 20  # runs looked through (newest first) for the served model's checkpoint


class ReportNotFoundError(NotFoundError):
    """No such run, figure or card in the results bucket."""


@dataclass(frozen=True)
class RunReport:
    """What one run's analysis folder holds."""

    run: str
    figures: list[str]  # PNG names directly under analysis/
    model_cards: list[str]  # strategies with a model card
    dataset_card: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "figures": self.figures,
            "model_cards": self.model_cards,
            "dataset_card": self.dataset_card,
        }


def checked_name(name: str, what: str) -> str:
    """`name` if it is a plain file or run name (no path), else ReportNotFoundError."""
    if not NAME.fullmatch(name or "") or ".." in name:
        raise ReportNotFoundError(f"no {what} named {name!r}")
    return name


class Reports:
    """Reads runs' analysis outputs from the results bucket (listing cached for `cache_seconds`)."""

    def __init__(self, store: ObjectStore, results_bucket: str, models_bucket: str, cache_seconds: float = 30.0):
        self.store, self.results, self.models = store, results_bucket, models_bucket
        self.cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._runs: tuple[float, list[str]] | None = None
        self._served: dict[str, tuple[float, tuple[str, str] | None]] = {}

    def runs(self) -> list[str]:
        """Run ids with a report, newest first."""
        with self._lock:
            if self._runs is not None and time.monotonic() - self._runs[0] < self.cache_seconds:
                return self._runs[1]
        try:
            keys = [ref.key for ref in self.store.list(self.results, RUNS_PREFIX)]
        except NotFoundError:
            keys = []
        runs = sorted({m.group(1) for key in keys if (m := REPORT_KEY.match(key))}, reverse=True)
        with self._lock:
            self._runs = (time.monotonic(), runs)
        return runs

    def resolve(self, run: str | None) -> str:
        """`run` (checked to exist), or the latest run; ReportNotFoundError when there is none."""
        runs = self.runs()
        if not run:
            if not runs:
                raise ReportNotFoundError(
                    f"no experiment report in the results bucket ({self.results}/{RUNS_PREFIX}<run>/{ANALYSIS}/) yet: "
                    "run an experiment first (make experiment-local or make experiment)"
                )
            return runs[0]
        checked_name(run, "run")
        if run not in runs:
            raise ReportNotFoundError(f"no report of run {run!r} in the results bucket")
        return run

    def _analysis(self, run: str) -> str:
        return f"{RUNS_PREFIX}{run}/{ANALYSIS}/"

    def contents(self, run: str) -> RunReport:
        """The figures and cards of run `run`'s analysis."""
        prefix = self._analysis(run)
        keys = [ref.key[len(prefix) :] for ref in self.store.list(self.results, prefix)]
        cards_dir = f"{layout.MODEL_CARDS_DIR}/"
        return RunReport(
            run=run,
            figures=sorted(key for key in keys if "/" not in key and key.endswith(".png")),
            model_cards=sorted(
                key[len(cards_dir) : -3]
                for key in keys
                if key.startswith(cards_dir) and key.endswith(".md") and "/" not in key[len(cards_dir) :]
            ),
            dataset_card=layout.DATASET_CARD in keys,
        )

    def _get(self, key: str, what: str) -> bytes:
        try:
            return self.store.get_bytes(self.results, key)
        except NotFoundError as exc:
            raise ReportNotFoundError(f"no {what} at {self.results}/{key}") from exc

    def report_text(self, run: str) -> str:
        return self._get(self._analysis(run) + layout.COMPARISON_REPORT, "report").decode("utf-8", errors="replace")

    def figure(self, run: str, name: str) -> bytes:
        checked_name(name, "figure")
        if not name.endswith(".png"):
            raise ReportNotFoundError(f"no figure named {name!r}")
        return self._get(self._analysis(run) + name, "figure")

    def model_card(self, run: str, strategy: str) -> str:
        checked_name(strategy, "model card")
        key = f"{self._analysis(run)}{layout.MODEL_CARDS_DIR}/{strategy}.md"
        return self._get(key, "model card").decode("utf-8", errors="replace")

    def dataset_card(self, run: str) -> str:
        return self._get(self._analysis(run) + layout.DATASET_CARD, "dataset card").decode("utf-8", errors="replace")

    def _arch(self, run: str) -> str | None:
        try:
            summary = json.loads(self.store.get_bytes(self.results, self._analysis(run) + layout.ANALYSIS_SUMMARY))
        except (StorageError, ValueError):
            return None
        arch = (summary.get("inputs") or {}).get("arch") if isinstance(summary, dict) else None
        return arch if isinstance(arch, str) and NAME.fullmatch(arch) else None

    def served(self, model_version: str) -> tuple[str, str] | None:
        """(run, strategy) whose checkpoint is the served model `model_version`, among the newest runs with a model
        card; None when none is (another model, or the models bucket is not readable)."""
        if not VERSION.fullmatch(model_version or ""):
            return None
        with self._lock:
            if model_version in self._served:
                at, cached = self._served[model_version]
                if cached is not None or time.monotonic() - at < self.cache_seconds:  # a miss is looked up again
                    return cached
        found = None
        for run in self.runs()[:MAX_RUNS_SEARCHED]:
            found = self._served_in(run, model_version)
            if found:
                break
        with self._lock:
            self._served[model_version] = (time.monotonic(), found)
        return found

    def operating_point(self, run: str, strategy: str) -> float | None:
        """The decision threshold train-classifier saved with strategy `strategy`'s served model of run `run` (its
        final metrics' calibration, the same the checkpoint carries); None when it is not recorded."""
        key = f"{RUNS_PREFIX}{run}/classifiers/metrics/{layout.final_metrics_name(checked_name(strategy, 'strategy'))}"
        try:
            final = json.loads(self.store.get_bytes(self.results, key))
        except (StorageError, ValueError):
            return None
        threshold = ((final or {}).get("calibration") or {}).get("threshold") if isinstance(final, dict) else None
        return float(threshold) if isinstance(threshold, int | float) and not isinstance(threshold, bool) else None

    def _served_in(self, run: str, model_version: str) -> tuple[str, str] | None:
        arch = self._arch(run)
        if arch is None:
            return None
        for strategy in self.contents(run).model_cards:
            key = f"{RUNS_PREFIX}{run}/classifiers/{layout.strategy_model_name(strategy, arch)}"
            try:
                if self.store.stat(self.models, key).sha256.startswith(model_version):
                    return run, strategy
            except StorageError as exc:  # not there, or this account may not read the models bucket
                log.debug("cannot stat %s/%s: %s", self.models, key, exc)
        return None
