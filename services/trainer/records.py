"""A trainer job as the manager keeps it (JobEntry) and as it is stored (trainer-jobs/<job_id>.json).

A stored record is read back as data, never trusted as a path: its job id must be one the trainer makes and match
the record's name, and its output prefix must pass the check a new request's does (InvalidRecordError otherwise).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from google.protobuf import json_format
from pneumonia_proto.v1 import trainer_pb2

from services.trainer.plan import (
    RECORDS_PREFIX,
    ClassifierRequest,
    GanRequest,
    Request,
    check_job_id,
    check_output_prefix,
)
from shared.errors import PneumoniaError

RECORD_FORMAT = 1


class InvalidRecordError(ValueError):
    """A job record that parses but is not one the trainer wrote: a job id or output prefix it would not make."""


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
    def from_record(cls, data: bytes, key: str | None = None) -> JobEntry:
        """The job stored as `data` (at `key`, when given: it must be trainer-jobs/<its job id>.json).
        ValueError/KeyError/TypeError/ParseError for a record that does not parse, InvalidRecordError for one whose
        job id or output prefix the trainer would not have made."""
        record = json.loads(data)
        job = json_format.ParseDict(record["job"], trainer_pb2.Job())
        request_type = GanRequest if job.kind == trainer_pb2.JOB_KIND_GAN else ClassifierRequest
        request = json_format.ParseDict(record["request"], request_type())
        try:
            check_job_id(job.job_id)
            if check_output_prefix(request.output_prefix) != request.output_prefix:
                raise InvalidRecordError(f"output_prefix {request.output_prefix!r} ends in '/'")
        except PneumoniaError as exc:  # ConfigError, InvalidKeyError
            raise InvalidRecordError(str(exc)) from exc
        if key is not None and key != f"{RECORDS_PREFIX}{job.job_id}.json":
            raise InvalidRecordError(f"the record of job {job.job_id} is stored as {key!r}, not as its own")
        return cls(
            job,
            request,
            bool(record["resumable"]),
            bool(record.get("cancel_requested", False)),
            int(record.get("crashes", 0)),
            bool(record.get("interrupted", False)),
            str(record.get("request_digest", "")),
        )
