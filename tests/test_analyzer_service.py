"""The analyzer service through real servers on 127.0.0.1: gRPC over LocalStore and S3, and the process.

The inputs are made the honest way, once per module: a small phantom dataset, a tiny GAN trained for one epoch,
synthetic images from it, and the real `train-classifier` for the baseline and augmented strategies; they are
stored in the trainer's layout (see services/analyzer/service.py) before the service analyzes them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from pneumonia_proto.v1 import analyzer_pb2, analyzer_pb2_grpc, common_pb2
from service_process import assert_health_and_reflection, json_log, service_process, serving_channel
from storage_server import S3TestServer, free_port

from pipeline.cli import main as cli
from services.analyzer.config import AnalyzerConfig
from services.analyzer.service import SERVICE_NAME, SUMMARY_NAME, AnalysisService, AnalyzerServicer
from shared.datasets.phantom import write_phantom_dataset
from shared.errors import ConfigError
from shared.grpc_service import GrpcServer, Service
from shared.storage import LocalStore, NotFoundError, ObjectStore, S3Store
from shared.storage.sync import upload_dir

RUN = "runs/r1/"
DATASET_PREFIX = "phantom/"
SYNTHETIC_PREFIX = "runs/r1/synthetic/"
WORK_DIR_MARK = "pneumonia-analysis-"  # the per-request work dir's name: never in what the caller sees
SMALL = {"num_ssim_real": 10, "num_ssim_synth": 20, "num_gradcam_samples": 1, "num_reference_real": 40}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data/, models/ (classifiers, fold models, gan/), results/metrics/ and synthetic/ of a tiny real run."""
    work = tmp_path_factory.mktemp("analyzer-inputs")
    data = write_phantom_dataset(work / "data", num_patients=100, image_size=32, num_test=2, seed=0)
    outputs = ["--model-dir", str(work / "models"), "--results-dir", str(work / "results" / "metrics")]
    outputs += ["--figures-dir", str(work / "results" / "figures")]
    gan = ["--image-size", "32", "--num-channels", "1", "--feature-maps-g", "8", "--feature-maps-d", "8"]
    gan += ["--latent-dim", "16", "--epochs", "1", "--batch-size", "32", "--workers", "0", "--vis-batch-size", "4"]
    common = ["--dataset", "phantom", "--data-dir", str(data), "--cpu"]
    assert cli(["train-gan", *common, *outputs, "--output-dir", str(work / "results"), *gan]) == 0
    generator = work / "models" / "gan" / "generator_final.pth"
    assert cli(["generate-synthetic", "--model-path", str(generator), "--output-dir", str(work / "synthetic"),
                "--num-images", "24", "--cpu"]) == 0  # fmt: skip
    classifier = ["--arch", "resnet18", "--weights", "none", "--unfreeze", "--image-size", "28", "--channels", "1"]
    classifier += ["--epochs", "1", "--batch-size", "16", "--k-folds", "2", "--max-images", "60", "--workers", "0"]
    classifier += ["--synthetic-dir", str(work / "synthetic")]
    for strategy in ([], ["--use-synthetic"]):
        assert cli(["train-classifier", *common, *outputs, *classifier, *strategy]) == 0
    return work


def publish(store: ObjectStore, inputs: Path) -> None:
    """Store the run as the services do: models/RUN, results/RUN/metrics/, synthetic/..., datasets/phantom/."""
    upload_dir(store, inputs / "models", "models", RUN)
    upload_dir(store, inputs / "results" / "metrics", "results", RUN + "metrics/")
    upload_dir(store, inputs / "synthetic", "synthetic", SYNTHETIC_PREFIX)
    upload_dir(store, inputs / "data", "datasets", DATASET_PREFIX)


def full_request(output_prefix: str, **fields: object) -> analyzer_pb2.AnalyzeRequest:
    """Every input (bucket fields left empty: the service's defaults), an unconditional generator, tiny sizes."""
    request = analyzer_pb2.AnalyzeRequest(
        metrics=common_pb2.ObjectPrefix(prefix=RUN + "metrics/"),
        models=common_pb2.ObjectPrefix(prefix=RUN),
        synthetic=common_pb2.ObjectPrefix(prefix=SYNTHETIC_PREFIX),
        output=common_pb2.ObjectPrefix(prefix=output_prefix),
        dataset=common_pb2.DatasetSource(name="phantom", data=common_pb2.ObjectPrefix(prefix=DATASET_PREFIX)),
        generator=common_pb2.ObjectRef(key=RUN + "gan/generator_final.pth"),
        arch="resnet18",
        cpu=True,
        **SMALL,
    )
    for name, value in fields.items():
        if isinstance(value, common_pb2.ObjectPrefix | common_pb2.ObjectRef | common_pb2.DatasetSource):
            getattr(request, name).CopyFrom(value)
        elif value is None:
            request.ClearField(name)
        else:
            setattr(request, name, value)
    return request


@dataclass
class Running:
    """A started gRPC server over an AnalysisService and a stub to it."""

    service: AnalysisService
    server: GrpcServer
    stub: analyzer_pb2_grpc.AnalyzerServiceStub
    channel: grpc.Channel
    store: ObjectStore


@contextmanager
def running_service(store: ObjectStore, work_dir: Path) -> Iterator[Running]:
    service = AnalysisService(AnalyzerConfig(work_dir=work_dir, device="cpu"), store)
    servicer = Service(SERVICE_NAME, AnalyzerServicer(service), analyzer_pb2_grpc.add_AnalyzerServiceServicer_to_server)
    server = GrpcServer([servicer], "127.0.0.1:0", callers=None, max_workers=4)
    server.start()
    channel = grpc.insecure_channel(server.address)
    try:
        yield Running(service, server, analyzer_pb2_grpc.AnalyzerServiceStub(channel), channel, store)
    finally:
        channel.close()
        server.stop(grace=0)


@pytest.fixture(scope="module")
def local(inputs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    store = LocalStore(tmp_path_factory.mktemp("analyzer-storage"))
    publish(store, inputs)
    with running_service(store, tmp_path_factory.mktemp("analyzer-work")) as running:
        yield running


def stored_keys(store: ObjectStore, bucket: str, prefix: str) -> list[str]:
    try:
        return [ref.key for ref in store.list(bucket, prefix)]
    except NotFoundError:  # a bucket that was never created holds nothing
        return []


def assert_refs_match_storage(store: ObjectStore, refs: list[common_pb2.ObjectRef]) -> None:
    for ref in refs:
        data = store.get_bytes(ref.bucket, ref.key)
        assert (hashlib.sha256(data).hexdigest(), len(data)) == (ref.sha256, ref.size), ref.key


def rpc_error(stub: analyzer_pb2_grpc.AnalyzerServiceStub, request: object, timeout: float) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        stub.Analyze(request, timeout=timeout)
    return info.value


def wait_for_call_logs(caplog: pytest.LogCaptureFixture, count: int, timeout: float = 60) -> list[logging.LogRecord]:
    """The first `count` 'Analyze' call log lines (each written when the server has finished the call)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = [record for record in caplog.records if getattr(record, "rpc", None) == "Analyze"]
        if len(records) >= count:
            return records
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} Analyze calls finished within {timeout} s")


# ---------------------------------------------------------------- the result


def test_analyze_stores_the_report_and_a_queued_call_keeps_its_deadline(
    local: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="shared.grpc_service")
    output = "runs/r1/analysis/"
    running = local.stub.Analyze.future(full_request(output), timeout=180)
    deadline = time.monotonic() + 30
    while not local.service.busy and time.monotonic() < deadline:
        time.sleep(0.01)
    # A second analysis waits for the first; its deadline passes while it waits.
    error = rpc_error(local.stub, full_request("runs/r1/queued/"), timeout=1.0)
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    response = running.result()
    queued, analyzed = wait_for_call_logs(caplog, 2)  # in the order the server finished them
    assert queued.code in ("DEADLINE_EXCEEDED", "CANCELLED") and analyzed.code == "OK"  # it stopped while waiting
    assert stored_keys(local.store, "results", "runs/r1/queued/") == []

    # The refs: every report file, the summary last, each matching the stored bytes.
    assert response.summary.bucket == "results" and response.summary.key == output + SUMMARY_NAME
    assert response.reports[-1] == response.summary
    assert_refs_match_storage(local.store, list(response.reports))
    summary = json.loads(local.store.get_bytes("results", response.summary.key))
    assert sorted(output + name for name in summary["outputs"]) == stored_keys(local.store, "results", output)
    assert sorted(ref.key for ref in response.reports) == stored_keys(local.store, "results", output)
    for figure in ("cv_comparison.png", "ssim_distribution.png", "memorization_closest_pairs.png"):
        assert figure in summary["outputs"]

    # The analysis of the real run: both trained strategies, curriculum missing, image quality computed.
    assert set(summary["strategies"]) == {"baseline", "augmented"}
    assert summary["strategies"]["augmented"]["n_fold_models"] == 2
    assert {c["strategy"] for c in summary["comparisons"]} == {"augmented"}
    pairs = {(c["strategy"], c["reference"]) for c in summary["holdout_tests"]["comparisons"]}
    assert pairs == {("augmented", "baseline")}  # image by image, from the jobs' per-image predictions
    assert summary["ssim"]["n_synthetic"] == 20 and summary["memorization"]["n_synthetic"] == 20
    assert summary["frechet_classifier"]["model"] == "baseline_resnet18"
    assert set(summary["gradcam"]["models"]) == {"baseline", "augmented"}
    assert summary["tstr"] is None
    report = local.store.get_bytes("results", output + "comparison_report.txt").decode()
    assert "augmented" in report and "curriculum" in report

    # The caller sees object URIs, never the server's work dir.
    skipped = list(response.skipped)
    assert skipped == summary["skipped"]
    assert "curriculum: s3://results/runs/r1/metrics/curriculum_final_metrics.json not found" in skipped
    assert any("s3://models/runs/r1/gan/generator_final.pth is an unconditional generator" in s for s in skipped)
    assert summary["inputs"]["data_dir"] == "s3://datasets/phantom"
    assert summary["inputs"]["analysis_dir"] == "s3://results/runs/r1/analysis"
    assert all(
        p["real"].startswith("s3://datasets/phantom/Training/") for p in summary["memorization"]["closest_pairs"]
    )
    stored_summary = local.store.get_bytes("results", response.summary.key).decode()
    assert WORK_DIR_MARK not in stored_summary and WORK_DIR_MARK not in report
    assert list(local.service.config.work_dir.iterdir()) == []  # each request's work dir is removed


def test_a_too_short_deadline_stops_the_analysis_and_stores_nothing(
    local: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="shared.grpc_service")
    output = "runs/r1/too-short/"
    error = rpc_error(local.stub, full_request(output), timeout=1.5)
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    (record,) = wait_for_call_logs(caplog, 1)
    assert record.code in ("DEADLINE_EXCEEDED", "CANCELLED")  # stopped between phases, not run to the end
    # The rule: analysis_summary.json (stored last) marks a complete report; here nothing was stored at all.
    assert stored_keys(local.store, "results", output) == []
    assert list(local.service.config.work_dir.iterdir()) == []


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"metrics": None}, "metrics is required"),
        ({"metrics": common_pb2.ObjectPrefix(bucket="results")}, "metrics.prefix is required"),
        ({"output": None}, "output.prefix is required"),
        ({"dataset": None}, "dataset.name is required"),
        ({"dataset": common_pb2.DatasetSource(name="mnist", data=common_pb2.ObjectPrefix(prefix="x/"))}, "'mnist'"),
        ({"dataset": common_pb2.DatasetSource(name="phantom")}, "dataset.data is required"),
        ({"arch": "vgg16"}, "arch: input should be 'resnet18'"),
        ({"num_ssim_real": -3}, "num_ssim_real: input should be greater than or equal to 1, got -3"),
        ({"num_reference_real": -1}, "num_reference_real: input should be greater than or equal to 0"),
        ({"seed": -1}, "seed: input should be greater than or equal to 0"),
        ({"memorization_threshold": 1.5}, "memorization_threshold: input should be less than or equal to 1"),
        ({"metrics": common_pb2.ObjectPrefix(prefix="runs/../x/")}, "metrics: invalid listing prefix"),
        ({"models": common_pb2.ObjectPrefix(bucket="Bad_Bucket", prefix=RUN)}, "models: invalid bucket name"),
        ({"generator": common_pb2.ObjectRef(bucket="models")}, "generator.key is required"),
    ],
)
def test_bad_requests_are_invalid_argument(local: Running, fields: dict, message: str) -> None:
    error = rpc_error(local.stub, full_request("runs/r1/bad/", **fields), timeout=30)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in error.details()


@pytest.mark.parametrize(
    ("fields", "code", "message"),
    [
        ({"metrics": common_pb2.ObjectPrefix(prefix="runs/none/metrics/")}, "NOT_FOUND", "metrics: no objects under"),
        ({"models": common_pb2.ObjectPrefix(prefix="runs/none/")}, "NOT_FOUND", "models: no objects under"),
        ({"generator": common_pb2.ObjectRef(key="runs/none/g.pth")}, "NOT_FOUND", "generator: "),
        ({"synthetic": common_pb2.ObjectPrefix(prefix="none/")}, "NOT_FOUND", "synthetic: no objects under"),
        (
            {"dataset": common_pb2.DatasetSource(name="phantom", data=common_pb2.ObjectPrefix(prefix="none/"))},
            "NOT_FOUND",
            "dataset.data: no objects under s3://datasets/none/",
        ),
        (
            {"generator": common_pb2.ObjectRef(key=RUN + "gan/generator_final.pth", sha256="0" * 64)},
            "FAILED_PRECONDITION",
            "not the requested " + "0" * 64,
        ),
    ],
)
def test_missing_inputs(local: Running, fields: dict, code: str, message: str) -> None:
    output = "runs/r1/missing/"
    error = rpc_error(local.stub, full_request(output, **fields), timeout=60)
    assert error.code().name == code
    assert message in error.details() and WORK_DIR_MARK not in error.details()
    assert stored_keys(local.store, "results", output) == []


def test_a_malformed_metrics_file_is_failed_precondition_naming_the_object(local: Running) -> None:
    local.store.put_bytes("results", "runs/broken/metrics/baseline_final_metrics.json", b"[1, 2")
    request = full_request("runs/broken/analysis/", metrics=common_pb2.ObjectPrefix(prefix="runs/broken/metrics/"))
    error = rpc_error(local.stub, request, timeout=60)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "malformed metrics file s3://results/runs/broken/metrics/baseline_final_metrics.json" in error.details()
    assert stored_keys(local.store, "results", "runs/broken/analysis/") == []


# ---------------------------------------------------------------- S3: optional inputs left out, and an outage


def test_s3_backend_without_optional_inputs_and_an_outage(inputs: Path, tmp_path: Path) -> None:
    server = S3TestServer(tmp_path / "s3")
    server.start()
    try:
        store = S3Store(
            server.endpoint, server.access_key, server.secret_key, secure=False, retries=2, retry_delay=0.01
        )
        publish(store, inputs)
        with running_service(store, tmp_path / "work") as running:
            request = full_request("runs/r1/lean/", models=None, synthetic=None, generator=None)
            response = running.stub.Analyze(request, timeout=120)
            assert_refs_match_storage(store, [*response.reports, response.summary])
            summary = json.loads(store.get_bytes("results", response.summary.key))
            assert set(summary["strategies"]) == {"baseline", "augmented"} and summary["ssim"] is None
            skipped = list(response.skipped)
            assert any(s.startswith("synthetic images: (no synthetic prefix in the request)") for s in skipped)
            assert "Grad-CAM: model (no models prefix in the request)/baseline_resnet18.pth not found" in skipped
            assert "TSTR: generator (no generator checkpoint in the request) not found" in skipped

            server.stop()
            error = rpc_error(running.stub, full_request("runs/r1/outage/"), timeout=60)
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert "unreachable" in error.details()
            server.start()
            assert stored_keys(store, "results", "runs/r1/outage/") == []
    finally:
        server.stop()


# ---------------------------------------------------------------- health, reflection, config, the process


def test_health_is_serving_and_reflection_lists_the_service(local: Running) -> None:
    assert_health_and_reflection(local.channel, SERVICE_NAME)


def test_config_from_env_defaults_and_errors(tmp_path: Path) -> None:
    config = AnalyzerConfig.from_env({})
    assert (config.host, config.grpc_port, config.workers, config.work_dir) == ("127.0.0.1", 50053, 4, None)
    assert (config.results_bucket, config.models_bucket, config.synthetic_bucket, config.datasets_bucket) == (
        "results",
        "models",
        "synthetic",
        "datasets",
    )
    config = AnalyzerConfig.from_env({"PNEUMONIA_ANALYZER_WORK_DIR": str(tmp_path), "PNEUMONIA_ANALYZER_DEVICE": "cpu"})
    assert config.work_dir == tmp_path and config.force_cpu
    for name, value in [
        ("PNEUMONIA_ANALYZER_GRPC_PORT", "70000"),
        ("PNEUMONIA_ANALYZER_WORKERS", "0"),
        ("PNEUMONIA_ANALYZER_DEVICE", "tpu"),
        ("PNEUMONIA_ANALYZER_GRACE", "soon"),
        ("PNEUMONIA_RESULTS_BUCKET", "Bad_Bucket"),
        ("PNEUMONIA_DATASETS_BUCKET", "x"),
    ]:
        with pytest.raises(ConfigError, match=name):
            AnalyzerConfig.from_env({name: value})


@pytest.mark.slow  # the process imports torch and the analysis code: 5-20 s
def test_service_process_serves_health_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    env = {
        "PNEUMONIA_STORAGE_BACKEND": "local",
        "PNEUMONIA_STORAGE_ROOT": str(tmp_path / "storage"),
        "PNEUMONIA_ANALYZER_GRPC_PORT": str(port),
        "PNEUMONIA_ANALYZER_WORK_DIR": str(tmp_path / "work"),
    }
    with service_process("analyzer", env) as process, serving_channel(port, SERVICE_NAME) as channel:
        error = rpc_error(analyzer_pb2_grpc.AnalyzerServiceStub(channel), analyzer_pb2.AnalyzeRequest(), 10)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    lines = json_log(process)
    messages = [line["msg"] for line in lines]
    assert "analyzer service ready" in messages and "grpc server stopped" in messages
    assert messages[-1] == "analyzer service stopped"
    assert all({"ts", "level", "logger", "msg"} <= set(line) for line in lines)
