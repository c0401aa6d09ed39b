"""A trainer job as the manager keeps it (JobEntry) and as it is stored (trainer-jobs/<job_id>.json)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from google.protobuf import json_format
from pneumonia_proto.v1 import trainer_pb2

from services.trainer.plan import ClassifierRequest, GanRequest, Request

RECORD_FORMAT = 1


@dataclass
class JobEntry:
    """A job as the manager keeps it; `version` rises with every change (what WatchJob waits for)."""

    job: trainer_pb2.Job
    request: Request
    resumable: bool = False  # this job has stored a state it can resume from
    cancel_requested: bool = False
    # Runs of this job that ended with the trainer process (a crash, a kill): a RUNNING record not marked
    # `interrupted`, found when the service starts. A graceful shutdown marks it and does not count.
    crashes: int = 0
    interrupted: bool = False
    # sha256 of the request as the client sent it: a retry with the same idempotency key must send the same one.
    request_digest: str = ""
    version: int = 0

    def record(self) -> bytes:
        """The JSON stored as trainer-jobs/<job_id>.json."""
        data = {
            "format_version": RECORD_FORMAT,
            "job": json_format.MessageToDict(self.job, preserving_proto_field_name=True),
            "request": json_format.MessageToDict(self.request, preserving_proto_field_name=True),
            "resumable": self.resumable,
            "cancel_requested": self.cancel_requested,
            "crashes": self.crashes,
            "interrupted": self.interrupted,
            "request_digest": self.request_digest,
        }
        return (json.dumps(data, indent=1) + "\n").encode()

    @classmethod
    def from_record(cls, data: bytes) -> JobEntry:
        record = json.loads(data)
        job = json_format.ParseDict(record["job"], trainer_pb2.Job())
        request_type = GanRequest if job.kind == trainer_pb2.JOB_KIND_GAN else ClassifierRequest
        request = json_format.ParseDict(record["request"], request_type())
        return cls(
            job,
            request,
            bool(record["resumable"]),
            bool(record.get("cancel_requested", False)),
            int(record.get("crashes", 0)),
            bool(record.get("interrupted", False)),
            str(record.get("request_digest", "")),
        )
