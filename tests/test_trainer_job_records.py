"""Stored trainer job records are data, not paths (security review, issue 25): a record whose job id or output
prefix is not one the trainer could have made is skipped at start, and nothing is deleted or stops the trainer."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format
from pneumonia_proto.v1 import common_pb2, trainer_pb2, trainer_pb2_grpc

from services.trainer.config import TrainerConfig
from services.trainer.jobs import RECORDS_PREFIX, JobManager
from services.trainer.plan import check_job_id, effective_request, new_job_id
from services.trainer.records import JobEntry
from services.trainer.service import SERVICE_NAME, TrainerServicer
from shared.errors import ConfigError
from shared.grpc_service import GrpcServer, Service
from shared.storage import LocalStore

DATASET = common_pb2.DatasetSource(name="phantom", data=common_pb2.ObjectPrefix(bucket="datasets", prefix="phantom/"))


def gan_record(job_id: str, state: int, created_s: int, **request_fields: object) -> dict:
    """The stored record of a GAN job, as JobManager writes it (JobEntry.record)."""
    config = TrainerConfig(grpc_port=0, work_dir=Path("unused"), device="cpu")
    request = trainer_pb2.StartGanJobRequest(dataset=DATASET, epochs=1, cpu=True)
    request = effective_request(config, uuid.uuid4().hex, request)
    for name, value in request_fields.items():
        setattr(request, name, value)
    job = trainer_pb2.Job(job_id=job_id, kind=trainer_pb2.JOB_KIND_GAN, state=state, total_epochs=1)
    job.created_at.FromSeconds(created_s)
    return json.loads(JobEntry(job, request).record())


@contextmanager
def running_trainer(store: LocalStore, work_dir: Path) -> Iterator[trainer_pb2_grpc.TrainerServiceStub]:
    """The trainer as its process runs it (JobManager.start, then the gRPC server); stopped on leaving."""
    jobs = JobManager(TrainerConfig(grpc_port=0, work_dir=work_dir, device="cpu"), store)
    servicer = Service(SERVICE_NAME, TrainerServicer(jobs), trainer_pb2_grpc.add_TrainerServiceServicer_to_server)
    server = GrpcServer([servicer], "127.0.0.1:0", callers=None, max_workers=4)
    jobs.start()
    server.start()
    channel = grpc.insecure_channel(server.address)
    try:
        assert jobs._worker is not None and jobs._worker.is_alive()
        yield trainer_pb2_grpc.TrainerServiceStub(channel)
    finally:
        channel.close()
        jobs.begin_shutdown()
        server.stop(grace=5)
        assert jobs.wait_stopped(timeout=60), "the job worker did not stop"


# job id (as stored in the record), where the record is stored (a name under trainer-jobs/), its output prefix
PLANTED = {
    "job id '..'": ("..", "...json", None),
    "job id 'a/b'": ("a/b", "a/b.json", None),
    "job id '/etc'": ("/etc", "etc.json", None),
    "job id '../../victim'": ("../../victim", "victim.json", None),
    "job id with a NUL": ("ab\x00", "ab.json", None),
    "a well-formed id under another record's name": (uuid.uuid4().hex, "copied.json", None),
    "output prefix in the records": (uuid.uuid4().hex, "", "trainer-jobs"),
    "output prefix '../x'": (uuid.uuid4().hex, "", "../x"),
}


def test_planted_job_records_are_skipped_and_nothing_is_deleted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Records planted under trainer-jobs/ (queued or running, so the worker would take them): each is logged and
    skipped, the trainer starts and runs the good queued job after them, and WORK_DIR, its jobs/ folder, a file
    in it and a folder beside it are all still there; a good finished job beside them is restored."""
    store = LocalStore(tmp_path / "storage")
    store.ensure_bucket("models")
    work_dir = tmp_path / "work"
    (work_dir / "jobs").mkdir(parents=True)  # as after any earlier job: WORK_DIR/jobs/.. is WORK_DIR
    sentinel = work_dir / "sentinel.txt"
    sentinel.write_text("keep me")
    (tmp_path / "victim").mkdir()
    (tmp_path / "victim" / "file").write_text("keep me too")

    planted = {}
    for n, (job_id, name, prefix) in enumerate(PLANTED.values()):
        fields = {"output_prefix": prefix} if prefix else {}
        record = gan_record(job_id, common_pb2.JOB_STATE_RUNNING if n % 2 else common_pb2.JOB_STATE_QUEUED, n, **fields)
        key = RECORDS_PREFIX + (name or f"{job_id}.json")
        store.put_bytes("models", key, json.dumps(record).encode())
        planted[key] = record
    store.put_bytes("models", f"{RECORDS_PREFIX}unparseable.json", b"{not json")
    good_done, good_queued = new_job_id(), new_job_id()
    store.put_bytes(
        "models",
        f"{RECORDS_PREFIX}{good_done}.json",
        json.dumps(gan_record(good_done, common_pb2.JOB_STATE_SUCCEEDED, 1)).encode(),
    )
    # Queued after every planted record: once it has ended, the worker would have run any planted one.
    store.put_bytes(
        "models",
        f"{RECORDS_PREFIX}{good_queued}.json",
        json.dumps(gan_record(good_queued, common_pb2.JOB_STATE_QUEUED, 100)).encode(),
    )
    stored_before = {ref.key: store.get_bytes("models", ref.key) for ref in store.list("models", RECORDS_PREFIX)}

    with caplog.at_level(logging.WARNING, logger="services.trainer"), running_trainer(store, work_dir) as stub:
        assert stub.GetJob(trainer_pb2.GetJobRequest(job_id=good_done)).state == common_pb2.JOB_STATE_SUCCEEDED
        updates = list(stub.WatchJob(trainer_pb2.WatchJobRequest(job_id=good_queued), timeout=120))
        assert updates[-1].state == common_pb2.JOB_STATE_FAILED  # it ran (no dataset is stored): the worker is alive
        for record in planted.values():
            with pytest.raises(grpc.RpcError) as missing:
                stub.GetJob(trainer_pb2.GetJobRequest(job_id=record["job"]["job_id"]))
            assert missing.value.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)

    assert (
        (work_dir / "jobs").is_dir()
        and sentinel.read_text() == "keep me"
        and (tmp_path / "victim" / "file").read_text() == "keep me too"
    )
    skipped = " ".join(record.getMessage() for record in caplog.records if "skipping" in record.getMessage())
    for key in [*planted, f"{RECORDS_PREFIX}unparseable.json"]:
        assert f"s3://models/{key} " in skipped, key
    # The planted records stay in place, untouched, for inspection; only the good queued job's record changed.
    stored_after = {ref.key: store.get_bytes("models", ref.key) for ref in store.list("models", RECORDS_PREFIX)}
    assert set(stored_after) == set(stored_before)
    assert {key for key in stored_after if stored_after[key] != stored_before[key]} == {
        f"{RECORDS_PREFIX}{good_queued}.json"
    }


@pytest.mark.parametrize(
    "job_id", ["..", ".", "", "a/b", "/etc", "A" * 32, "0" * 31, "0" * 33, "g" * 32, "0" * 31 + "\n"]
)
def test_a_job_id_the_trainer_did_not_make_is_refused(job_id: str) -> None:
    with pytest.raises(ConfigError, match="not one the trainer makes"):
        check_job_id(job_id)


def test_the_ids_the_trainer_makes_pass_and_a_record_round_trips() -> None:
    job_id = new_job_id()
    assert check_job_id(job_id) == job_id
    record = json.dumps(gan_record(job_id, common_pb2.JOB_STATE_QUEUED, 0)).encode()
    assert JobEntry.from_record(record).job.job_id == job_id
    assert JobEntry.from_record(record, key=f"{RECORDS_PREFIX}{job_id}.json").job.job_id == job_id
    with pytest.raises(ValueError, match="stored as"):
        JobEntry.from_record(record, key=f"{RECORDS_PREFIX}{new_job_id()}.json")
    bad_prefix = gan_record(job_id, common_pb2.JOB_STATE_QUEUED, 0, output_prefix="model-store/x")
    with pytest.raises(ValueError, match="output_prefix"):
        JobEntry.from_record(json.dumps(bad_prefix).encode())
    assert json_format.ParseDict(json.loads(record)["job"], trainer_pb2.Job()).job_id == job_id
