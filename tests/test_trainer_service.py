"""The trainer service through real gRPC servers on 127.0.0.1 (LocalStore and S3), restarts, and the process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import torch
from google.protobuf import json_format
from pneumonia_proto.v1 import common_pb2, trainer_pb2, trainer_pb2_grpc
from service_process import json_log, service_process, serving_channel
from storage_server import S3TestServer, free_port, s3_server  # noqa: F401 (fixture)
from training_helpers import write_synthetic_folder

from pipeline.through_services import start_job, watch_job
from services.trainer.config import TrainerConfig
from services.trainer.jobs import RECORDS_PREFIX, JobManager
from services.trainer.service import SERVICE_NAME, TrainerServicer
from shared.checkpoints import load_checkpoint
from shared.datasets.phantom import write_phantom_dataset
from shared.errors import ConfigError
from shared.grpc_service import GrpcServer, Service
from shared.storage import LocalStore, ObjectStore, S3Store
from shared.storage.sync import upload_dir

WATCH_TIMEOUT = 240
# A tiny DCGAN: 32 px gray, 16-d latent, 8 feature maps, 40 pneumonia images, 4 epochs, one sample grid at the end.
GAN_FIELDS = {
    "epochs": 4,
    "batch_size": 16,
    "latent_dim": 16,
    "num_channels": 1,
    "image_size": 32,
    "feature_maps_g": 8,
    "feature_maps_d": 8,
    "max_images": 40,
    "sample_every": 100,
    "vis_batch_size": 8,
    "cpu": True,
}
# A tiny ResNet-18: 8 px gray, 2 folds of about 20 training images, one epoch each.
CLASSIFIER_FIELDS = {
    "epochs": 1,
    "batch_size": 20,
    "k_folds": 2,
    "arch": "resnet18",
    "weights": "none",
    "unfreeze": True,
    "image_size": 8,
    "channels": 1,
    "max_images": 40,
    "scheduler": trainer_pb2.LR_SCHEDULER_ONECYCLE,
    "cpu": True,
}
DATASET = common_pb2.DatasetSource(name="phantom", data=common_pb2.ObjectPrefix(bucket="datasets", prefix="phantom/"))
SYNTHETIC = common_pb2.ObjectPrefix(bucket="synthetic", prefix="gen/run1/")


def gan_request(**fields: object) -> trainer_pb2.StartGanJobRequest:
    return trainer_pb2.StartGanJobRequest(**{"dataset": DATASET, **GAN_FIELDS, **fields})


def classifier_request(**fields: object) -> trainer_pb2.StartClassifierJobRequest:
    return trainer_pb2.StartClassifierJobRequest(**{"dataset": DATASET, **CLASSIFIER_FIELDS, **fields})


@pytest.fixture(scope="module")
def small_phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """100 phantom patients at 32 px (hold-out 20, development 80)."""
    return write_phantom_dataset(
        tmp_path_factory.mktemp("phantom-service"), num_patients=100, image_size=32, positive_fraction=0.4, seed=0
    )


def put_inputs(store: ObjectStore, phantom: Path, synthetic: Path | None = None) -> None:
    """The dataset under datasets/phantom/ and (optionally) a synthetic folder under synthetic/gen/run1/."""
    upload_dir(store, phantom, "datasets", "phantom/")
    if synthetic is not None:
        upload_dir(store, synthetic, SYNTHETIC.bucket, SYNTHETIC.prefix)


@dataclass
class Running:
    """A started trainer: its JobManager, gRPC server, a stub and the store behind it."""

    jobs: JobManager
    server: GrpcServer
    stub: trainer_pb2_grpc.TrainerServiceStub
    store: ObjectStore
    work_dir: Path

    def wait(self, job: trainer_pb2.Job) -> list[trainer_pb2.Job]:
        """Every update WatchJob sends until the job ends."""
        return list(self.stub.WatchJob(trainer_pb2.WatchJobRequest(job_id=job.job_id), timeout=WATCH_TIMEOUT))

    def record(self, job_id: str) -> dict:
        return json.loads(self.store.get_bytes("models", f"{RECORDS_PREFIX}{job_id}.json"))


@contextmanager
def running_trainer(
    store: ObjectStore, work_dir: Path, address: str = "127.0.0.1:0", **settings: object
) -> Iterator[Running]:
    """A trainer on `address` (default: any free port of 127.0.0.1); leaving stops it as SIGTERM would, waiting for
    its worker."""
    config = TrainerConfig(grpc_port=0, work_dir=work_dir, device="cpu", **settings)
    jobs = JobManager(config, store)
    servicer = Service(SERVICE_NAME, TrainerServicer(jobs), trainer_pb2_grpc.add_TrainerServiceServicer_to_server)
    server = GrpcServer([servicer], address, callers=None, max_workers=8)
    jobs.start()
    server.start()
    channel = grpc.insecure_channel(server.address)
    try:
        yield Running(jobs, server, trainer_pb2_grpc.TrainerServiceStub(channel), store, work_dir)
    finally:
        channel.close()
        jobs.begin_shutdown()
        server.stop(grace=5)
        assert jobs.wait_stopped(timeout=120), "the job worker did not stop"


@pytest.fixture(scope="module")
def local(small_phantom: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    root = tmp_path_factory.mktemp("trainer")
    store = LocalStore(root / "storage")
    put_inputs(store, small_phantom, write_synthetic_folder(root / "synthetic", 12))
    with running_trainer(store, root / "work") as running:
        yield running


@pytest.fixture(scope="module")
def gan_job(local: Running) -> tuple[trainer_pb2.Job, list[trainer_pb2.Job]]:
    """A GAN job run to its end: (the job as StartGanJob returned it, every WatchJob update)."""
    started = local.stub.StartGanJob(gan_request(output_prefix="runs/r1/gan"))
    return started, local.wait(started)


def record_time(record: dict, name: str) -> int:
    stamp = trainer_pb2.Job()
    json_format.ParseDict({name: record["job"][name]}, stamp)
    return getattr(stamp, name).ToNanoseconds()


def generator_weights(store: ObjectStore, key: str, tmp_path: Path) -> dict[str, torch.Tensor]:
    path = tmp_path / "generator_final.pth"
    store.get_file("models", key, path)
    return load_checkpoint(path, "dcgan-generator")["state_dict"]


def test_gan_job_streams_its_epochs_and_stores_every_output(
    local: Running, gan_job: tuple[trainer_pb2.Job, list[trainer_pb2.Job]]
) -> None:
    started, updates = gan_job
    assert started.state == common_pb2.JOB_STATE_QUEUED and started.kind == trainer_pb2.JOB_KIND_GAN
    assert (started.total_epochs, started.fold, started.total_folds) == (4, 0, 0)
    final = updates[-1]
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.message
    running = [u for u in updates if u.state == common_pb2.JOB_STATE_RUNNING]
    epochs = [u.epoch for u in running if u.epoch]
    assert epochs == sorted(epochs) and {1, 2, 3, 4} <= set(epochs)
    assert {"loss_d", "loss_g", "d_real", "d_fake"} <= set(final.metrics)
    assert local.stub.GetJob(trainer_pb2.GetJobRequest(job_id=started.job_id)) == final

    stored = {(ref.bucket, ref.key): ref for ref in final.outputs}
    for bucket, key in [
        ("models", "runs/r1/gan/generator_final.pth"),
        ("models", "runs/r1/gan/discriminator_final.pth"),
        ("models", "runs/r1/gan/checkpoint_last.pth"),
        ("results", "runs/r1/gan/metrics/gan_training_history.json"),
        ("results", "runs/r1/gan/figures/gan_loss_curve.png"),
        ("results", "runs/r1/gan/figures/gan_real_vs_synthetic.png"),
        ("results", "runs/r1/gan/gan_images/epoch_004.png"),
    ]:
        assert (bucket, key) in stored, key
    for ref in final.outputs:
        assert local.store.stat(ref.bucket, ref.key).sha256 == ref.sha256
    history = json.loads(local.store.get_bytes("results", "runs/r1/gan/metrics/gan_training_history.json"))
    assert [row["epoch"] for row in history["epochs"]] == [1, 2, 3, 4]
    assert history["config"]["max_images"] == 40 and history["config"]["image_size"] == 32

    record = local.record(started.job_id)
    assert record["job"]["state"] == "JOB_STATE_SUCCEEDED" and record["request"]["output_prefix"] == "runs/r1/gan"
    assert final.created_at.ToNanoseconds() <= final.started_at.ToNanoseconds() <= final.finished_at.ToNanoseconds()
    assert not (local.work_dir / "jobs" / started.job_id).exists()  # its scratch files are gone


def test_classifier_job_stores_metrics_models_and_the_model_archive(local: Running) -> None:
    request = classifier_request(
        output_prefix="runs/r1/classifiers", use_synthetic=True, synthetic=SYNTHETIC, model_archive_name="pneu-aug"
    )
    started = local.stub.StartClassifierJob(request)
    assert (started.kind, started.total_folds, started.total_epochs) == (trainer_pb2.JOB_KIND_CLASSIFIER, 2, 1)
    updates = local.wait(started)
    final = updates[-1]
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.message
    progress = [(u.fold, u.epoch) for u in updates if u.state == common_pb2.JOB_STATE_RUNNING and u.epoch]
    assert progress[0] == (1, 1) and progress[-1] == (2, 1)
    assert {"train_loss", "val_loss", "val_acc", "synthetic_ratio"} <= set(final.metrics)

    keys = {ref.key for ref in final.outputs}
    assert {
        "runs/r1/classifiers/augmented_resnet18.pth",
        "runs/r1/classifiers/fold_1_augmented_resnet18.pth",
        "runs/r1/classifiers/fold_2_augmented_resnet18.pth",
        "runs/r1/classifiers/metrics/augmented_final_metrics.json",
        "runs/r1/classifiers/metrics/augmented_cv_summary.json",
        "runs/r1/classifiers/metrics/augmented_holdout_predictions.csv",
        "runs/r1/classifiers/figures/augmented_cv_metrics.png",
    } <= keys
    final_metrics = json.loads(
        local.store.get_bytes("results", "runs/r1/classifiers/metrics/augmented_final_metrics.json")
    )
    assert final_metrics["n_synthetic_pool"] == 12 and len(final_metrics["holdout_per_fold"]) == 2

    archive = final.model_archive
    assert (archive.bucket, archive.key) == ("models", "model-store/pneu-aug.mar")
    assert local.store.stat(archive.bucket, archive.key).sha256 == archive.sha256
    mar = local.work_dir.parent / "pneu-aug.mar"
    local.store.get_file(archive.bucket, archive.key, mar)
    with zipfile.ZipFile(mar) as zf:
        manifest = json.loads(zf.read("MAR-INF/MANIFEST.json"))
    assert manifest["model"]["modelName"] == "pneu-aug"


def test_cancel_a_queued_job_at_once_and_a_running_one_at_its_next_checkpoint(local: Running) -> None:
    long_job = local.stub.StartGanJob(gan_request(epochs=300, output_prefix="runs/cancel/long"))
    queued = local.stub.StartGanJob(gan_request(output_prefix="runs/cancel/queued"))
    cancelled = local.stub.CancelJob(trainer_pb2.CancelJobRequest(job_id=queued.job_id))
    assert cancelled.state == common_pb2.JOB_STATE_CANCELLED and not cancelled.HasField("started_at")
    assert local.record(queued.job_id)["job"]["state"] == "JOB_STATE_CANCELLED"

    watch = local.stub.WatchJob(trainer_pb2.WatchJobRequest(job_id=long_job.job_id), timeout=WATCH_TIMEOUT)
    for update in watch:
        if update.epoch >= 1:
            break
    answer = local.stub.CancelJob(trainer_pb2.CancelJobRequest(job_id=long_job.job_id))
    assert answer.state == common_pb2.JOB_STATE_RUNNING and "cancelling" in answer.message
    final = list(watch)[-1]
    assert final.state == common_pb2.JOB_STATE_CANCELLED, final.message
    assert 1 <= final.epoch < 300 and final.HasField("finished_at")
    assert local.stub.GetJob(trainer_pb2.GetJobRequest(job_id=queued.job_id)).state == common_pb2.JOB_STATE_CANCELLED
    # Cancelling an ended job changes nothing.
    again = local.stub.CancelJob(trainer_pb2.CancelJobRequest(job_id=long_job.job_id))
    assert again.state == common_pb2.JOB_STATE_CANCELLED


BAD_REQUESTS = [
    ("gan", {"dataset": common_pb2.DatasetSource(name="mnist")}, "INVALID_ARGUMENT", "dataset.name must be one of"),
    ("gan", {"epochs": -1}, "INVALID_ARGUMENT", "epochs: input should be greater than 0"),
    ("gan", {"lr": float("nan")}, "INVALID_ARGUMENT", "lr: input should be a finite number"),
    ("gan", {"image_size": 48}, "INVALID_ARGUMENT", "image_size: image_size must be a power of two"),
    ("gan", {"loss": 7}, "INVALID_ARGUMENT", "loss: unknown value 7"),
    ("gan", {"conditional": True, "train_on": trainer_pb2.GAN_TRAIN_ON_POSITIVE}, "INVALID_ARGUMENT", "--conditional"),
    ("gan", {"output_prefix": "../escape"}, "INVALID_ARGUMENT", "invalid object key"),
    ("gan", {"output_prefix": "trainer-jobs/x"}, "INVALID_ARGUMENT", "reserved"),
    ("gan", {"seed": 2**40}, "INVALID_ARGUMENT", "seed: input should be less than or equal to 2147483647"),
    ("gan", {"epochs": 2**31 - 1}, "INVALID_ARGUMENT", "epochs: input should be less than or equal to 10000"),
    ("gan", {"image_size": 4096}, "INVALID_ARGUMENT", "image_size: input should be less than or equal to 1024"),
    ("gan", {"resume": True, "output_prefix": "runs/none"}, "NOT_FOUND", "no GAN run to continue"),
    (
        "gan",
        {"dataset": common_pb2.DatasetSource(name="phantom", data=common_pb2.ObjectPrefix(prefix="missing/"))},
        "NOT_FOUND",
        "no objects under s3://datasets/missing/",
    ),
    ("classifier", {"use_curriculum": True}, "INVALID_ARGUMENT", "add --use-synthetic"),
    ("classifier", {"k_folds": 1000}, "INVALID_ARGUMENT", "k_folds: input should be less than or equal to 20"),
    (
        "classifier",
        {"use_synthetic": True, "use_curriculum": True, "synthetic": SYNTHETIC, "curriculum_schedule": "0:0.0, x"},
        "INVALID_ARGUMENT",
        "--curriculum-schedule",
    ),
    ("classifier", {"model_archive_name": "no spaces"}, "INVALID_ARGUMENT", "invalid model name"),
    ("classifier", {"arch": "resnet9"}, "INVALID_ARGUMENT", "arch: input should be 'resnet18'"),
    ("classifier", {"weights": "/etc/passwd"}, "INVALID_ARGUMENT", "weights must be 'imagenet' or 'none'"),
    ("classifier", {"unfreeze": False}, "INVALID_ARGUMENT", "frozen randomly initialised backbone"),
    ("classifier", {"k_folds": 1, "val_fraction": 1.5}, "INVALID_ARGUMENT", "val_fraction: input should be less"),
    (
        "classifier",
        {"use_synthetic": True, "synthetic": common_pb2.ObjectPrefix(prefix="gen/none/")},
        "NOT_FOUND",
        "no manifest.csv under s3://synthetic/gen/none/",
    ),
    (
        "classifier",
        {"weights_checkpoint": common_pb2.ObjectRef(key="nothing/here.pth")},
        "NOT_FOUND",
        "nothing/here.pth",
    ),
]


@pytest.mark.parametrize(("kind", "fields", "code", "message"), BAD_REQUESTS)
def test_bad_requests_are_refused_with_a_message(
    local: Running, kind: str, fields: dict, code: str, message: str
) -> None:
    records = len(list(local.store.list("models", RECORDS_PREFIX)))
    with pytest.raises(grpc.RpcError) as error:
        if kind == "gan":
            local.stub.StartGanJob(gan_request(**fields), timeout=30)
        else:
            local.stub.StartClassifierJob(classifier_request(**fields), timeout=30)
    assert error.value.code().name == code
    assert message in error.value.details()
    assert len(list(local.store.list("models", RECORDS_PREFIX))) == records  # nothing was recorded


def test_unknown_jobs_are_not_found(local: Running) -> None:
    for call, request in [
        (local.stub.GetJob, trainer_pb2.GetJobRequest(job_id="nope")),
        (local.stub.CancelJob, trainer_pb2.CancelJobRequest(job_id="nope")),
        (lambda r, timeout: list(local.stub.WatchJob(r, timeout=timeout)), trainer_pb2.WatchJobRequest(job_id="nope")),
    ]:
        with pytest.raises(grpc.RpcError) as error:
            call(request, timeout=10)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND and "no job 'nope'" in error.value.details()
    with pytest.raises(grpc.RpcError) as error:
        local.stub.GetJob(trainer_pb2.GetJobRequest(), timeout=10)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_watch_ends_at_its_deadline(local: Running) -> None:
    job = local.stub.StartGanJob(gan_request(epochs=300, output_prefix="runs/deadline"))
    try:
        with pytest.raises(grpc.RpcError) as error:
            list(local.stub.WatchJob(trainer_pb2.WatchJobRequest(job_id=job.job_id), timeout=1.5))
        assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        local.stub.CancelJob(trainer_pb2.CancelJobRequest(job_id=job.job_id))
        assert local.wait(job)[-1].state == common_pb2.JOB_STATE_CANCELLED


@pytest.mark.parametrize("stored_before_the_fix", [False, True], ids=["checkpoint", "legacy-gan-gan-checkpoint"])
def test_a_restarted_service_resumes_the_job_from_its_last_checkpoint(
    small_phantom: Path,
    tmp_path: Path,
    local: Running,
    gan_job: tuple[trainer_pb2.Job, list[trainer_pb2.Job]],
    stored_before_the_fix: bool,
) -> None:
    store = LocalStore(tmp_path / "storage")
    put_inputs(store, small_phantom)
    work_dir = tmp_path / "work"
    with running_trainer(store, work_dir) as first:
        job = first.stub.StartGanJob(gan_request(output_prefix="runs/r1/gan"))
        for update in first.stub.WatchJob(trainer_pb2.WatchJobRequest(job_id=job.job_id), timeout=WATCH_TIMEOUT):
            if update.epoch >= 1:
                break
    # Stopped like SIGTERM mid-job: the record stays RUNNING and resumable, after some of the 4 epochs.
    record = first.record(job.job_id)
    assert record["job"]["state"] == "JOB_STATE_RUNNING" and record["resumable"]
    stopped_at = record["job"]["epoch"]
    assert 1 <= stopped_at < 4
    shutil.rmtree(work_dir)  # a fresh machine: the state has to come from storage
    if stored_before_the_fix:  # a job stored before the gan/gan/ fix kept its state under P/gan/
        state = store.get_bytes("models", "runs/r1/gan/checkpoint_last.pth")
        store.put_bytes("models", "runs/r1/gan/gan/checkpoint_last.pth", state)
        store.delete("models", "runs/r1/gan/checkpoint_last.pth")

    with running_trainer(store, work_dir) as second:
        assert second.stub.GetJob(trainer_pb2.GetJobRequest(job_id=job.job_id)).state in (
            common_pb2.JOB_STATE_QUEUED,
            common_pb2.JOB_STATE_RUNNING,
        )
        updates = second.wait(job)
    final = updates[-1]
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.message
    trained = [u.epoch for u in updates if u.state == common_pb2.JOB_STATE_RUNNING and u.epoch > stopped_at]
    assert trained and min(trained) == stopped_at + 1  # no epoch was trained twice
    assert final.started_at.ToNanoseconds() == record_time(record, "started_at")  # the first start, kept
    history = json.loads(store.get_bytes("results", "runs/r1/gan/metrics/gan_training_history.json"))
    assert [row["epoch"] for row in history["epochs"]] == [1, 2, 3, 4]
    keys = {ref.key for ref in final.outputs}
    assert {"runs/r1/gan/checkpoint_last.pth", "runs/r1/gan/gan_images/epoch_004.png"} <= keys
    # Exactly the weights of the uninterrupted job with the same options.
    assert gan_job[1][-1].state == common_pb2.JOB_STATE_SUCCEEDED
    key = "runs/r1/gan/generator_final.pth"
    straight = generator_weights(local.store, key, tmp_path / "a")
    resumed = generator_weights(store, key, tmp_path / "b")
    assert all(torch.equal(tensor, resumed[name]) for name, tensor in straight.items())


def test_gan_job_on_the_s3_server(small_phantom: Path, tmp_path: Path, s3_server: S3TestServer) -> None:  # noqa: F811
    store = S3Store(s3_server.endpoint, s3_server.access_key, s3_server.secret_key, secure=False, region="us-east-1")
    put_inputs(store, small_phantom)
    with running_trainer(store, tmp_path / "work") as s3:
        job = s3.stub.StartGanJob(gan_request(epochs=1, output_prefix="runs/s3/gan"))
        final = s3.wait(job)[-1]
        assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.message
        for ref in final.outputs:
            assert store.stat(ref.bucket, ref.key).sha256 == ref.sha256
        assert any(ref.key == "runs/s3/gan/generator_final.pth" for ref in final.outputs)
        assert s3.record(job.job_id)["job"]["state"] == "JOB_STATE_SUCCEEDED"


def test_storage_outage_is_unavailable(small_phantom: Path, tmp_path: Path) -> None:
    server = S3TestServer(tmp_path / "s3")
    server.start()
    try:
        store = S3Store(
            server.endpoint, server.access_key, server.secret_key, secure=False, region="us-east-1", retries=2,
            retry_delay=0.05,
        )  # fmt: skip
        store.ensure_bucket("datasets")
        with running_trainer(store, tmp_path / "work") as down:
            server.stop()
            with pytest.raises(grpc.RpcError) as error:
                down.stub.StartGanJob(gan_request(output_prefix="runs/down"), timeout=60)
            assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop()


def test_config_from_env_defaults_and_errors(tmp_path: Path) -> None:
    config = TrainerConfig.from_env({})
    assert (config.host, config.grpc_port, config.device, config.loader_workers) == ("127.0.0.1", 50051, "auto", 0)
    assert (config.models_bucket, config.results_bucket, config.datasets_bucket) == ("models", "results", "datasets")
    config = TrainerConfig.from_env(
        {
            "PNEUMONIA_TRAINER_GRPC_PORT": "0",
            "PNEUMONIA_TRAINER_WORK_DIR": str(tmp_path),
            "PNEUMONIA_RESULTS_BUCKET": "",
        }
    )
    assert config.grpc_port == 0 and config.work_dir == tmp_path and config.results_bucket == "results"
    for env, message in [
        ({"PNEUMONIA_TRAINER_GRPC_PORT": "70000"}, "PNEUMONIA_TRAINER_GRPC_PORT"),
        ({"PNEUMONIA_TRAINER_DEVICE": "tpu"}, "PNEUMONIA_TRAINER_DEVICE"),
        ({"PNEUMONIA_TRAINER_GRACE": "-1"}, "PNEUMONIA_TRAINER_GRACE"),
        ({"PNEUMONIA_RESULTS_BUCKET": "Bad_Bucket"}, "PNEUMONIA_RESULTS_BUCKET"),
    ]:
        with pytest.raises(ConfigError, match=message):
            TrainerConfig.from_env(env)


def test_service_process_answers_health_and_sigterm_leaves_the_running_job_resumable(
    small_phantom: Path, tmp_path: Path
) -> None:
    store = LocalStore(tmp_path / "storage")
    put_inputs(store, small_phantom)
    port = free_port()
    env = {
        "PNEUMONIA_STORAGE_BACKEND": "local",
        "PNEUMONIA_STORAGE_ROOT": str(store.root),
        "PNEUMONIA_TRAINER_GRPC_PORT": str(port),
        "PNEUMONIA_TRAINER_WORK_DIR": str(tmp_path / "work"),
        "PNEUMONIA_TRAINER_DEVICE": "cpu",
        "PNEUMONIA_TRAINER_GRACE": "20",
    }
    with service_process("trainer", env, stop_timeout=30) as process, serving_channel(port, SERVICE_NAME) as channel:
        stub = trainer_pb2_grpc.TrainerServiceStub(channel)
        job = stub.StartGanJob(gan_request(epochs=300, output_prefix="runs/process"), timeout=30)
        for update in stub.WatchJob(trainer_pb2.WatchJobRequest(job_id=job.job_id), timeout=WATCH_TIMEOUT):
            if update.epoch >= 1:
                break
    lines = json_log(process)
    messages = [line["msg"] for line in lines]
    assert "trainer service ready" in messages and "grpc server stopped" in messages
    assert "job interrupted by shutdown" in messages and messages[-1] == "trainer service stopped"
    assert all({"ts", "level", "logger", "msg"} <= set(line) for line in lines)
    record = json.loads(store.get_bytes("models", f"{RECORDS_PREFIX}{job.job_id}.json"))
    assert record["job"]["state"] == "JOB_STATE_RUNNING" and record["resumable"]
    assert 1 <= record["job"]["epoch"] < 300
    assert store.exists("models", "runs/process/checkpoint_last.pth")


ENTRY_POINT = """
import runpy
import sys

sys.argv = ["python -m services.trainer", "--help"]
try:  # the service's entry point, as `python -m services.trainer` runs it (--help: it starts nothing)
    runpy.run_module("services.trainer", run_name="__main__")
except SystemExit:
    pass
"""
FORKS_INSIDE_A_SERVER = """
import threading
from concurrent import futures
import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from torch.utils.data import DataLoader, TensorDataset

server = grpc.server(futures.ThreadPoolExecutor(4))
health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
port = server.add_insecure_port("127.0.0.1:0")
server.start()
stop = threading.Event()

def call() -> None:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        while not stop.is_set():
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())

callers = [threading.Thread(target=call) for _ in range(4)]
for caller in callers:
    caller.start()
for epoch in range(3):  # DataLoader workers forked while other threads are inside gRPC, as in a training job
    for _ in DataLoader(TensorDataset(torch.zeros(64, 2)), batch_size=8, num_workers=2):
        pass
stop.set()
for caller in callers:
    caller.join()
server.stop(0)
"""


def test_data_loader_workers_forked_inside_the_server_log_no_grpc_warning() -> None:
    """The trainer forks DataLoader workers inside its gRPC server. With gRPC's fork handlers on (its default), each
    such fork logs 'Other threads are currently calling into gRPC, skipping fork() handlers' (6 times for this
    program without the entry point, measured by hand) and can hang the fork outright, as it did when this test
    tried that control under pytest. The trainer's entry point turns them off."""
    env = {key: value for key, value in os.environ.items() if key != "GRPC_ENABLE_FORK_SUPPORT"}
    result = subprocess.run(
        [sys.executable, "-c", ENTRY_POINT + FORKS_INSIDE_A_SERVER],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "skipping fork() handlers" not in result.stderr


def test_a_damaged_job_record_is_skipped_and_the_trainer_still_starts(
    local: Running,
    gan_job: tuple[trainer_pb2.Job, list[trainer_pb2.Job]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A record whose bytes no longer match their checksum (bit rot, a hand edit) and one that is not a job: both
    are logged and left in place, and the trainer starts with every other job."""
    store = LocalStore(tmp_path / "storage")
    store.ensure_bucket("models")
    good = f"{RECORDS_PREFIX}{gan_job[0].job_id}.json"
    store.put_bytes("models", good, local.store.get_bytes("models", good))
    store.put_bytes("models", f"{RECORDS_PREFIX}rotted.json", local.store.get_bytes("models", good))
    (store.root / "models" / RECORDS_PREFIX / "rotted.json").write_bytes(b'{"job": {"job_id": "rotted"}}')
    store.put_bytes("models", f"{RECORDS_PREFIX}not-a-job.json", b"[1, 2, 3]")

    with caplog.at_level("ERROR", logger="services.trainer"), running_trainer(store, tmp_path / "work") as trainer:
        job = trainer.stub.GetJob(trainer_pb2.GetJobRequest(job_id=gan_job[0].job_id))
        assert job.state == common_pb2.JOB_STATE_SUCCEEDED
    skipped = [record.getMessage() for record in caplog.records if "skipping unreadable job record" in record.msg]
    assert len(skipped) == 2 and any("rotted.json (left in place): " in line and "corrupt" in line for line in skipped)
    assert {ref.key for ref in store.list("models", RECORDS_PREFIX)} >= {f"{RECORDS_PREFIX}rotted.json"}


def crashed_record(record: dict, crashes: int, interrupted: bool) -> bytes:
    """What a trainer leaves when it dies (interrupted False) or shuts down gracefully (True) while running a job."""
    record = json.loads(json.dumps(record))
    record["job"]["state"] = "JOB_STATE_RUNNING"
    record["job"].pop("finished_at", None)
    record.update(crashes=crashes, interrupted=interrupted, resumable=False)
    return json.dumps(record).encode()


@pytest.mark.parametrize(
    ("crashes", "interrupted", "runs_again"),
    [(0, False, True), (2, True, True), (2, False, False)],
    ids=["first crash: requeued", "graceful shutdown: not a crash", "third crash: failed"],
)
def test_a_job_the_trainer_keeps_dying_on_is_failed_after_max_crashes(
    small_phantom: Path,
    local: Running,
    gan_job: tuple[trainer_pb2.Job, list[trainer_pb2.Job]],
    tmp_path: Path,
    crashes: int,
    interrupted: bool,
    runs_again: bool,
) -> None:
    """PNEUMONIA_TRAINER_MAX_CRASHES (3): a job found RUNNING at start, without the mark a graceful shutdown leaves,
    counts a crash; at the third it fails instead of being run again (and blocking every later job)."""
    store = LocalStore(tmp_path / "storage")
    put_inputs(store, small_phantom)
    store.ensure_bucket("models")
    key = f"{RECORDS_PREFIX}{gan_job[0].job_id}.json"
    store.put_bytes("models", key, crashed_record(local.record(gan_job[0].job_id), crashes, interrupted))
    with running_trainer(store, tmp_path / "work") as trainer:
        job = trainer.stub.GetJob(trainer_pb2.GetJobRequest(job_id=gan_job[0].job_id))
        if runs_again:
            final = trainer.wait(job)[-1]
            assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.message
        else:
            assert job.state == common_pb2.JOB_STATE_FAILED and "died 3 times" in job.message
    stored = json.loads(store.get_bytes("models", key))
    assert stored["crashes"] == crashes + (0 if interrupted else 1) and stored["interrupted"] is False


def test_a_retried_start_returns_the_job_it_started(local: Running) -> None:
    """The same idempotency key and request: the same job (a client's retry after a lost answer); the same key with
    another request: INVALID_ARGUMENT, nothing started."""
    request = gan_request(output_prefix="runs/idempotent/gan", idempotency_key="run-7/train-gan")
    first = local.stub.StartGanJob(request)
    again = local.stub.StartGanJob(request)
    assert again.job_id == first.job_id
    with pytest.raises(grpc.RpcError) as reused:
        local.stub.StartGanJob(
            gan_request(output_prefix="runs/idempotent/gan", epochs=2, idempotency_key="run-7/train-gan")
        )
    assert reused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and first.job_id in reused.value.details()
    assert local.wait(first)[-1].state == common_pb2.JOB_STATE_SUCCEEDED
    other = local.stub.StartGanJob(gan_request(output_prefix="runs/idempotent/gan2", idempotency_key="run-7/other"))
    assert other.job_id != first.job_id
    local.wait(other)


def test_a_full_queue_refuses_new_jobs_with_resource_exhausted(small_phantom: Path, tmp_path: Path) -> None:
    """PNEUMONIA_TRAINER_MAX_QUEUED_JOBS=1: one job runs, one waits, the next is refused and nothing of it is kept."""
    store = LocalStore(tmp_path / "storage")
    put_inputs(store, small_phantom)
    with running_trainer(store, tmp_path / "work", max_queued_jobs=1) as trainer:
        running = trainer.stub.StartGanJob(gan_request(output_prefix="runs/q/a", epochs=8))
        for update in trainer.stub.WatchJob(trainer_pb2.WatchJobRequest(job_id=running.job_id), timeout=WATCH_TIMEOUT):
            if update.state == common_pb2.JOB_STATE_RUNNING:
                break
        waiting = trainer.stub.StartGanJob(gan_request(output_prefix="runs/q/b"))
        with pytest.raises(grpc.RpcError) as full:
            trainer.stub.StartGanJob(gan_request(output_prefix="runs/q/c"))
        assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "MAX_QUEUED_JOBS" in full.value.details()
        records = {ref.key for ref in store.list("models", RECORDS_PREFIX)}
        assert records == {f"{RECORDS_PREFIX}{running.job_id}.json", f"{RECORDS_PREFIX}{waiting.job_id}.json"}
        for job in (running, waiting):
            assert trainer.wait(job)[-1].state == common_pb2.JOB_STATE_SUCCEEDED


def test_the_orchestrator_watches_a_job_again_after_the_trainer_restarts(small_phantom: Path, tmp_path: Path) -> None:
    """pipeline.through_services.watch_job, as the orchestrator runs it, follows a job across a trainer restart on
    the same address: the shutdown ends its stream, it retries while nothing listens, and it sees the requeued job
    resume and succeed."""
    store = LocalStore(tmp_path / "storage")
    put_inputs(store, small_phantom)
    address = f"127.0.0.1:{free_port()}"
    watched: dict[str, trainer_pb2.Job] = {}
    with grpc.insecure_channel(address) as channel:
        stub = trainer_pb2_grpc.TrainerServiceStub(channel)
        with running_trainer(store, tmp_path / "work", address=address) as first:
            job = first.stub.StartGanJob(gan_request(output_prefix="runs/w/gan", epochs=6))
            watcher = threading.Thread(target=lambda: watched.update(job=watch_job(stub, job, "train-gan")))
            watcher.start()
            for update in first.stub.WatchJob(trainer_pb2.WatchJobRequest(job_id=job.job_id), timeout=WATCH_TIMEOUT):
                if update.epoch >= 1:
                    break
        time.sleep(2)  # nothing listens: the watcher keeps trying
        assert watcher.is_alive()
        with running_trainer(store, tmp_path / "work", address=address):
            watcher.join(timeout=WATCH_TIMEOUT)
    assert not watcher.is_alive()
    final = watched["job"]
    assert final.job_id == job.job_id and final.state == common_pb2.JOB_STATE_SUCCEEDED and final.epoch == 6


def test_the_orchestrator_starts_a_job_once_through_retries_and_watches_it_across_stream_deadlines(
    small_phantom: Path, tmp_path: Path
) -> None:
    """pipeline.through_services.start_job sends StartGanJob again while the trainer is not there yet (same
    idempotency key: one job, the same one a later retry gets); watch_job opens a new stream each time one reaches
    its deadline and follows the job to its end."""
    store = LocalStore(tmp_path / "storage")
    put_inputs(store, small_phantom)
    address = f"127.0.0.1:{free_port()}"
    started: dict[str, trainer_pb2.Job] = {}
    with grpc.insecure_channel(address) as channel:
        stub = trainer_pb2_grpc.TrainerServiceStub(channel)
        request = gan_request(output_prefix="runs/retry/gan", epochs=6)
        starter = threading.Thread(target=lambda: started.update(job=start_job(stub.StartGanJob, request, "run/gan")))
        starter.start()
        time.sleep(3)  # nothing listens yet: the first attempts fail UNAVAILABLE
        assert starter.is_alive()
        with running_trainer(store, tmp_path / "work", address=address):
            starter.join(timeout=60)
            assert not starter.is_alive()
            job = started["job"]
            again = start_job(stub.StartGanJob, gan_request(output_prefix="runs/retry/gan", epochs=6), "run/gan")
            assert again.job_id == job.job_id
            final = watch_job(stub, job, "train-gan", watch_deadline_s=0.5)
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED and final.epoch == 6
    records = [ref.key for ref in store.list("models", RECORDS_PREFIX)]
    assert records == [f"{RECORDS_PREFIX}{job.job_id}.json"]


def test_a_live_job_owns_its_outputs(small_phantom: Path, tmp_path: Path) -> None:
    """A second job into the outputs of a queued or running job is FAILED_PRECONDITION naming the owner, with no
    record kept; the strategies of one experiment share a prefix; once the owner ended, its prefix may be reused."""
    store = LocalStore(tmp_path / "storage")
    put_inputs(store, small_phantom, write_synthetic_folder(tmp_path / "synthetic", 12))

    def records() -> int:
        return len(list(store.list("models", RECORDS_PREFIX)))

    def refused(start: Callable[[], object]) -> str:
        with pytest.raises(grpc.RpcError) as error:
            start()
        assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        return error.value.details()

    with running_trainer(store, tmp_path / "work") as trainer:
        owner = trainer.stub.StartGanJob(gan_request(output_prefix="runs/own/gan", epochs=50))
        same = gan_request(output_prefix="runs/own/gan/")  # the same prefix, spelled with a '/'
        assert f"output prefix 'runs/own/gan' belongs to job {owner.job_id}" in refused(
            lambda: trainer.stub.StartGanJob(same)
        )
        assert records() == 1
        start = trainer.stub.StartClassifierJob
        start(classifier_request(output_prefix="runs/own/classifiers", model_archive_name="own-a"))
        refused(lambda: start(classifier_request(output_prefix="runs/own/classifiers")))  # same strategy and repeat
        other = classifier_request(output_prefix="runs/own/other", model_archive_name="own-a")
        assert "model archive 'own-a'" in refused(lambda: start(other))
        start(classifier_request(output_prefix="runs/own/classifiers", repeat=1))  # its own repeat-1/ files
        start(classifier_request(output_prefix="runs/own/classifiers", use_synthetic=True, synthetic=SYNTHETIC))
        assert records() == 4
        trainer.stub.CancelJob(trainer_pb2.CancelJobRequest(job_id=owner.job_id))
        assert trainer.wait(owner)[-1].state == common_pb2.JOB_STATE_CANCELLED
        assert trainer.stub.StartGanJob(gan_request(output_prefix="runs/own/gan", epochs=1)).job_id != owner.job_id
