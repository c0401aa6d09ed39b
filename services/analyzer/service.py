"""The analyzer service: `pneumonia analyze-results` behind gRPC, its inputs and its report in object storage.

One Analyze call
  1. validates the request (INVALID_ARGUMENT naming the field) and builds analyze-results' config from it
     (AnalysisConfig.from_proto: a zero field keeps the CLI's default);
  2. waits for the analysis slot: analyses are CPU-heavy, so one runs at a time; a waiting call still stops on
     its deadline or cancellation;
  3. downloads into a per-request work dir (removed afterwards): the metrics prefix, from the models prefix only
     the `{strategy}_{arch}.pth` files the analysis reads (not fold models or GAN checkpoints), the generator
     checkpoint and the synthetic prefix when given, and the dataset prefix; a given prefix that holds nothing
     is NOT_FOUND;
  4. runs the analysis (services.analyzer.analyze_results.analyze), checking the deadline between its phases;
  5. stores the figures and comparison_report.txt under the output prefix, then analysis_summary.json last.

The completeness rule: an output prefix holds a complete report exactly when analysis_summary.json is there. An
analysis deletes an earlier summary at its output prefix before it stores anything, and stores its own summary
after every other file; a call stopped or failed before that (deadline, cancellation, storage outage) leaves no
summary, and whatever it stored is overwritten by the next analysis into the prefix. The summary's `outputs`
names the files that belong to it.

Paths of the work dir never reach the caller: in the summary, the report, the `skipped` lines and error messages
they are replaced by the object URIs the files came from (e.g. s3://datasets/phantom/Training/Images/x.png), and
an input the request left out by a note such as "(no models prefix in the request)".
"""

from __future__ import annotations

import logging
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from pneumonia_proto.v1 import analyzer_pb2, analyzer_pb2_grpc, common_pb2

from services.analyzer import analyze_results
from services.analyzer.config import AnalyzerConfig
from services.analyzer.report import STRATEGIES, render_report
from shared import layout
from shared.configs import AnalysisConfig
from shared.datasets import DATASETS
from shared.errors import CheckpointError, ConfigError, PneumoniaError
from shared.grpc_service import ensure_active, rpc_method
from shared.images import atomic_write_bytes, atomic_write_json
from shared.storage import InvalidKeyError, NotFoundError, ObjectRef, ObjectStore
from shared.storage.base import object_uri, validate_bucket, validate_key, validate_prefix
from shared.storage.proto import ref_to_proto
from shared.storage.sync import download_prefix, upload_dir

log = logging.getLogger(__name__)

SERVICE_NAME = analyzer_pb2.DESCRIPTOR.services_by_name["AnalyzerService"].full_name
SUMMARY_NAME = layout.ANALYSIS_SUMMARY
REPORT_NAME = layout.COMPARISON_REPORT
SLOT_POLL_S = 0.2  # how often a call waiting for the analysis slot checks its deadline

Check = Callable[[], None]  # raises to stop the work (a passed deadline, a cancelled call)


def _no_check() -> None:
    """The default Check: nobody stops the work."""


@dataclass(frozen=True)
class Location:
    """A validated ObjectPrefix: bucket and key prefix ('' for the whole bucket, else ending in '/')."""

    bucket: str
    prefix: str

    @property
    def uri(self) -> str:
        return object_uri(self.bucket, self.prefix)


@dataclass(frozen=True)
class AnalysisPlan:
    """A validated request: where each input is, where the report goes, and analyze-results' option flags."""

    metrics: Location
    output: Location
    dataset: Location
    models: Location | None  # None: analyses that need a classifier are skipped
    synthetic: Location | None  # None: image quality and memorization are skipped
    generator: ObjectRef | None  # sha256 '' / size 0: not checked; None: TSTR is skipped
    options: AnalysisConfig  # analyze-results' options; its paths are filled in by Workspace.options


@dataclass(frozen=True)
class AnalysisResult:
    """Every stored report file (analysis_summary.json last), the summary's reference, what was skipped."""

    reports: list[ObjectRef]
    summary: ObjectRef
    skipped: list[str]


# ---------------------------------------------------------------- the request


def _is_set(message: Any) -> bool:
    """Whether an ObjectPrefix or ObjectRef field names anything (an empty message counts as unset)."""
    return any(value for _, value in message.ListFields())


def _location(name: str, message: common_pb2.ObjectPrefix, default_bucket: str, example: str = "") -> Location:
    """The field's bucket (default: `default_bucket`) and prefix; a non-empty prefix is required with `example`."""
    bucket, prefix = message.bucket or default_bucket, message.prefix
    if example and not prefix:
        raise ConfigError(f"{name}.prefix is required: {example}")
    try:
        validate_bucket(bucket)
        validate_prefix(prefix)
    except InvalidKeyError as exc:
        raise InvalidKeyError(f"{name}: {exc}") from exc
    if prefix and not prefix.endswith("/"):
        prefix += "/"  # a folder: "runs/a" must not pick up "runs/ab/..."
    return Location(bucket, prefix)


def _generator_ref(message: common_pb2.ObjectRef, default_bucket: str) -> ObjectRef:
    if not message.key:
        raise ConfigError("generator.key is required when generator is set (e.g. runs/r1/gan/generator_final.pth)")
    bucket = message.bucket or default_bucket
    try:
        validate_bucket(bucket)
        validate_key(message.key)
    except InvalidKeyError as exc:
        raise InvalidKeyError(f"generator: {exc}") from exc
    if message.size < 0:
        raise ConfigError(f"generator.size must be >= 0 (0: not checked), got {message.size}")
    return ObjectRef(bucket, message.key, message.sha256, message.size)


def plan_from_request(request: analyzer_pb2.AnalyzeRequest, config: AnalyzerConfig) -> AnalysisPlan:
    """Validate the request; ConfigError or InvalidKeyError (INVALID_ARGUMENT) naming the first bad field."""
    if not _is_set(request.metrics):
        raise ConfigError("metrics is required: the prefix of the classifier jobs' metrics (e.g. runs/r1/metrics/)")
    metrics = _location("metrics", request.metrics, config.results_bucket, "the metrics folder (e.g. runs/r1/metrics/)")
    output = _location("output", request.output, config.results_bucket, "the report folder (e.g. runs/r1/analysis/)")
    if not request.dataset.name:
        raise ConfigError(f"dataset.name is required: one of {', '.join(DATASETS)}")
    if request.dataset.name not in DATASETS:
        raise ConfigError(f"dataset.name must be one of {', '.join(DATASETS)}, got {request.dataset.name!r}")
    if not _is_set(request.dataset.data):
        raise ConfigError("dataset.data is required: where the dataset's files are stored (e.g. prefix phantom/)")
    dataset = _location("dataset.data", request.dataset.data, config.datasets_bucket)
    models = _location("models", request.models, config.models_bucket) if _is_set(request.models) else None
    synthetic = None
    if _is_set(request.synthetic):
        synthetic = _location("synthetic", request.synthetic, config.synthetic_bucket)
    generator = _generator_ref(request.generator, config.models_bucket) if _is_set(request.generator) else None
    # bad values fail now, before anything is downloaded; the paths are the work dir's, set by Workspace.options
    options = AnalysisConfig.from_proto(request, dataset=request.dataset.name, cpu=request.cpu or config.force_cpu)
    return AnalysisPlan(metrics, output, dataset, models, synthetic, generator, options)


# ---------------------------------------------------------------- the work dir


@dataclass
class Workspace:
    """One request's work dir; `names` maps its paths to what the caller knows them as (URIs, notes)."""

    root: Path
    names: dict[str, str] = field(default_factory=dict)

    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def synthetic(self) -> Path:
        return self.root / "synthetic"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def analysis(self) -> Path:
        return self.root / "analysis"

    def generator(self, ref: ObjectRef | None) -> Path:
        return self.root / "generator" / (ref.key.rsplit("/", 1)[-1] if ref else "generator.pth")

    def name_dir(self, path: Path, location: Location | None, absent: str = "") -> None:
        """Call `path` by `location`'s URI, or by the note `absent` when the request left the input out."""
        base = location.uri if location else f"({absent})/"
        self.names[f"{path}/"] = base
        self.names[str(path)] = base.rstrip("/")

    def in_words(self, text: str) -> str:
        """`text` with every work-dir path replaced by its name (longest paths first)."""
        for path in sorted(self.names, key=len, reverse=True):
            text = text.replace(path, self.names[path])
        return text

    def rename(self, value: Any) -> Any:
        """in_words applied to every string in a JSON-like value."""
        if isinstance(value, str):
            return self.in_words(value)
        if isinstance(value, list):
            return [self.rename(item) for item in value]
        if isinstance(value, dict):
            return {key: self.rename(item) for key, item in value.items()}
        return value

    def options(self, plan: AnalysisPlan) -> AnalysisConfig:
        """analyze-results' options for `plan`, with this work dir's paths."""
        return plan.options.model_copy(
            update={
                "metrics_dir": str(self.metrics),
                "model_dir": str(self.models),
                "synthetic_dir": str(self.synthetic),
                "data_dir": str(self.data),
                "analysis_dir": str(self.analysis),
                "gan_model_path": str(self.generator(plan.generator)),
            }
        )


def _renamed(exc: Exception, workspace: Workspace) -> Exception:
    """`exc` with the work dir's paths in its message replaced, as the same type (itself when nothing changes)."""
    message = workspace.in_words(str(exc))
    if message == str(exc):
        return exc
    try:
        return type(exc)(message)
    except TypeError:  # an exception type that takes other arguments: keep it as it is
        return exc


# ---------------------------------------------------------------- the service


class AnalysisService:
    """Runs analyses of stored inputs one at a time and stores their reports (see the module docstring)."""

    def __init__(self, config: AnalyzerConfig, store: ObjectStore) -> None:
        self.config = config
        self.store = store
        self._slot = threading.Lock()
        if config.work_dir is not None:
            try:
                config.work_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"PNEUMONIA_ANALYZER_WORK_DIR {config.work_dir}: {exc}") from exc

    @property
    def busy(self) -> bool:
        """Whether an analysis is running now (further calls wait for it)."""
        return self._slot.locked()

    def analyze(self, plan: AnalysisPlan, check: Check = _no_check) -> AnalysisResult:
        """Wait for the slot, download, analyze, store the report; NotFoundError, StorageUnavailableError,
        CheckpointError, DatasetError, or whatever `check` raises to stop the work."""
        with (
            self._analysis_slot(check),
            tempfile.TemporaryDirectory(prefix="pneumonia-analysis-", dir=self.config.work_dir) as tmp,
        ):
            workspace = Workspace(Path(tmp))
            try:
                log.info("analysis started", extra={"output": plan.output.uri, "metrics": plan.metrics.uri})
                self._fetch_inputs(plan, workspace, check)
                summary = analyze_results.analyze(workspace.options(plan), check)
                summary = self._rename_report(workspace, summary)
                result = self._store_report(plan.output, workspace, summary, check)
            except (PneumoniaError, ValueError) as exc:
                renamed = _renamed(exc, workspace)
                if renamed is exc:
                    raise
                raise renamed from exc
        log.info(
            "analysis stored",
            extra={"output": plan.output.uri, "reports": len(result.reports), "skipped": len(result.skipped)},
        )
        return result

    @contextmanager
    def _analysis_slot(self, check: Check) -> Iterator[None]:
        """Hold the one analysis slot; while another call holds it, wait and keep running `check`."""
        if not self._slot.acquire(blocking=False):
            log.info("waiting for the analysis in progress")
            while not self._slot.acquire(timeout=SLOT_POLL_S):
                check()
        try:
            check()
            yield
        finally:
            self._slot.release()

    def _fetch_inputs(self, plan: AnalysisPlan, workspace: Workspace, check: Check) -> None:
        """Download every input the plan names into the work dir (small ones first, the dataset last)."""
        workspace.name_dir(workspace.metrics, plan.metrics)
        workspace.name_dir(workspace.models, plan.models, "no models prefix in the request")
        workspace.name_dir(workspace.synthetic, plan.synthetic, "no synthetic prefix in the request")
        workspace.name_dir(workspace.data, plan.dataset)
        workspace.name_dir(workspace.analysis, plan.output)
        generator_path = workspace.generator(plan.generator)
        workspace.names[str(generator_path)] = (
            plan.generator.uri if plan.generator else "(no generator checkpoint in the request)"
        )

        self._download("metrics", plan.metrics, workspace.metrics, check)
        if plan.models is not None:
            self._download_models(plan.models, plan.options.arch, workspace.models, check)
        if plan.generator is not None:
            self._download_generator(plan.generator, generator_path, check)
        if plan.synthetic is not None:
            self._download("synthetic", plan.synthetic, workspace.synthetic, check)
        self._download("dataset.data", plan.dataset, workspace.data, check)

    def _download(self, name: str, location: Location, dest: Path, check: Check) -> None:
        try:
            refs = download_prefix(self.store, location.bucket, location.prefix, dest, check)
        except NotFoundError as exc:
            raise NotFoundError(f"{name}: {exc}") from exc
        log.info("downloaded", extra={"input": name, "prefix": location.uri, "objects": len(refs)})

    def _download_models(self, location: Location, arch: str, dest: Path, check: Check) -> None:
        """The strategies' `{strategy}_{arch}.pth` right under the prefix; NotFoundError when it holds nothing."""
        wanted = {location.prefix + layout.strategy_model_name(strategy, arch) for strategy in STRATEGIES}
        try:
            refs = list(self.store.list(location.bucket, location.prefix))
        except NotFoundError as exc:
            raise NotFoundError(f"models: {exc}") from exc
        if not refs:
            raise NotFoundError(f"models: no objects under {location.uri}")
        found = [ref for ref in refs if ref.key in wanted]
        for ref in found:
            check()
            self.store.get_file(ref.bucket, ref.key, dest / ref.key[len(location.prefix) :])
        log.info("downloaded", extra={"input": "models", "prefix": location.uri, "objects": len(found)})

    def _download_generator(self, ref: ObjectRef, path: Path, check: Check) -> None:
        """The generator checkpoint, checked against the request's sha256 and size when it gives them."""
        try:
            stored = self.store.stat(ref.bucket, ref.key)
        except NotFoundError as exc:
            raise NotFoundError(f"generator: {exc}") from exc
        for what, asked, found in (("sha256", ref.sha256, stored.sha256), ("size", ref.size, stored.size)):
            if asked and asked != found:
                raise CheckpointError(
                    f"generator {stored.uri} has {what} {found}, not the requested {asked}: it was replaced since "
                    "the reference was taken"
                )
        check()
        if self.store.get_file(ref.bucket, ref.key, path).sha256 != stored.sha256:
            raise CheckpointError(f"generator {stored.uri} was replaced while it was being read; retry the request")

    def _rename_report(self, workspace: Workspace, summary: dict[str, Any]) -> dict[str, Any]:
        """Rewrite analysis_summary.json and comparison_report.txt with the work dir's paths named as objects."""
        summary = workspace.rename(summary)
        atomic_write_json(workspace.analysis / SUMMARY_NAME, summary)
        atomic_write_bytes(workspace.analysis / REPORT_NAME, render_report(summary).encode())
        return summary

    def _store_report(
        self, output: Location, workspace: Workspace, summary: dict[str, Any], check: Check
    ) -> AnalysisResult:
        """Delete an earlier summary, store every other file, then the summary (the completeness marker)."""
        summary_file = workspace.root / SUMMARY_NAME
        (workspace.analysis / SUMMARY_NAME).rename(summary_file)  # out of the folder upload_dir stores
        check()
        self.store.ensure_bucket(output.bucket)
        self.store.delete(output.bucket, output.prefix + SUMMARY_NAME)
        reports = upload_dir(self.store, workspace.analysis, output.bucket, output.prefix, check)
        check()
        summary_ref = self.store.put_file(output.bucket, output.prefix + SUMMARY_NAME, summary_file, "application/json")
        return AnalysisResult([*reports, summary_ref], summary_ref, list(summary["skipped"]))


# ---------------------------------------------------------------- gRPC front end


def response_to_proto(result: AnalysisResult) -> analyzer_pb2.AnalyzeResponse:
    return analyzer_pb2.AnalyzeResponse(
        reports=[ref_to_proto(ref) for ref in result.reports],
        summary=ref_to_proto(result.summary),
        skipped=result.skipped,
    )


class AnalyzerServicer(analyzer_pb2_grpc.AnalyzerServiceServicer):
    """pneumonia.v1.AnalyzerService over AnalysisService; stops work once the caller has gone."""

    def __init__(self, service: AnalysisService) -> None:
        self.service = service

    @rpc_method
    def Analyze(
        self, request: analyzer_pb2.AnalyzeRequest, context: grpc.ServicerContext
    ) -> analyzer_pb2.AnalyzeResponse:
        plan = plan_from_request(request, self.service.config)
        return response_to_proto(self.service.analyze(plan, check=lambda: ensure_active(context)))
