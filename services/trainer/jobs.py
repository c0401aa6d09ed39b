"""Training jobs: a FIFO queue run by one worker thread, progress, cancellation, restarts (JobManager).

A request is checked and planned up front (services.trainer.plan), recorded (services.trainer.records), queued, and
run by a JobRun (services.trainer.job_run). After every epoch the job's resumable state is uploaded and its record
rewritten, so a restarted service continues it from there (resume) instead of from scratch.

One trainer service per store: two services sharing a models bucket would both pick up the same jobs on restart.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import threading
from collections import deque
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

from google.protobuf import json_format
from pneumonia_proto.v1 import common_pb2, trainer_pb2

from services.trainer.config import TrainerConfig
from services.trainer.hooks import TrainingStopped
from services.trainer.job_run import JobRun
from services.trainer.plan import (
    RECORDS_PREFIX,
    ClassifierRequest,
    Request,
    check_inputs,
    effective_request,
    job_dirs,
    new_job_id,
    pin_weights,
    plan_job,
)
from services.trainer.records import InvalidRecordError, JobEntry
from shared.configs import ClassifierTrainingConfig
from shared.errors import ConfigError, ConflictError, PneumoniaError, ResourceExhaustedError
from shared.storage import CorruptObjectError, NotFoundError, ObjectStore
from shared.storage.proto import ref_to_proto

__all__ = ["RECORDS_PREFIX", "JobManager", "ShuttingDownError"]

log = logging.getLogger(__name__)

WATCH_POLL_S = 0.5  # how often a WatchJob stream checks that its client is still there

QUEUED, RUNNING = common_pb2.JOB_STATE_QUEUED, common_pb2.JOB_STATE_RUNNING
SUCCEEDED, FAILED = common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_FAILED
CANCELLED = common_pb2.JOB_STATE_CANCELLED
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})


class ShuttingDownError(PneumoniaError):
    """The service is stopping: it accepts no new jobs and ends watches (the running job resumes after a restart)."""


class JobManager:
    """Accepts jobs, runs them one at a time in a worker thread, and keeps their records in the models bucket."""

    def __init__(self, config: TrainerConfig, store: ObjectStore) -> None:
        self.config = config
        self.store = store
        self._entries: dict[str, JobEntry] = {}
        self._queue: deque[str] = deque()  # ids of QUEUED jobs, oldest first
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # notified on every committed change
        self._persist_lock = threading.Lock()
        self._submit_lock = threading.Lock()
        self._claims: dict[str, set[tuple[str, ...]]] = {}  # job id -> JobPlan.claims(), computed once
        self._stopping = threading.Event()
        self._worker: threading.Thread | None = None

    # ---- lifecycle

    def start(self) -> None:
        """Load the stored job records, queue again the jobs a previous run left queued or running, start working."""
        self.store.ensure_bucket(self.config.models_bucket)
        entries = []
        for ref in self.store.list(self.config.models_bucket, RECORDS_PREFIX):
            try:
                entries.append(JobEntry.from_record(self.store.get_bytes(ref.bucket, ref.key), key=ref.key))
            except InvalidRecordError as exc:
                # Not a record this trainer wrote (a job id such as '..' or 'a/b' would become a path below
                # WORK_DIR and a key): never read as a job, left in place for inspection.
                log.warning("skipping job record %s (left in place): %s", ref.uri, exc)
            except (CorruptObjectError, ValueError, KeyError, TypeError, json_format.ParseError) as exc:
                # One damaged record must not keep the trainer (and every other job) from starting; it stays in
                # place for inspection and is never read as a job.
                log.error("skipping unreadable job record %s (left in place): %s", ref.uri, exc)
        changed = []
        for entry in sorted(entries, key=lambda e: e.job.created_at.ToNanoseconds()):
            self._entries[entry.job.job_id] = entry
            if entry.job.state == RUNNING and entry.cancel_requested:  # cancelled, then shut down before it stopped
                self._finish_locked(entry, CANCELLED, f"cancelled after epoch {entry.job.epoch}")
                changed.append(entry)
            elif entry.job.state in (QUEUED, RUNNING):
                if entry.job.state == RUNNING and not entry.interrupted:
                    entry.crashes += 1  # the service died while it ran (a graceful shutdown marks `interrupted`)
                if entry.crashes >= self.config.max_crashes:  # a crash loop would block every later job
                    self._finish_locked(
                        entry,
                        FAILED,
                        f"the trainer died {entry.crashes} times while running this job (killed, out of memory, "
                        "a crash?); not run again",
                    )
                    changed.append(entry)
                    continue
                if entry.job.state == RUNNING:
                    entry.job.state = QUEUED
                    entry.job.message = "requeued after a service restart" + (
                        "; resumes from its last checkpoint" if entry.resumable else ""
                    )
                self._queue.append(entry.job.job_id)
                changed.append(entry)
        for entry in changed:
            self._persist(entry)
        if self._queue:
            ids = list(self._queue)
            log.info("requeued %d job(s) after a restart", len(ids), extra={"jobs": ids})
        self._worker = threading.Thread(target=self._work, name="trainer-jobs", daemon=True)
        self._worker.start()

    def begin_shutdown(self) -> None:
        """Accept no more jobs, end watches, ask the running job to stop at its next checkpoint (it stays resumable)."""
        self._stopping.set()
        with self._changed:
            self._changed.notify_all()

    def wait_stopped(self, timeout: float | None = None) -> bool:
        """Wait for the worker to finish (after begin_shutdown); True when it has."""
        if self._worker is None:
            return True
        self._worker.join(timeout)
        return not self._worker.is_alive()

    def stop(self, timeout: float | None = None) -> bool:
        self.begin_shutdown()
        return self.wait_stopped(timeout)

    # ---- the API

    def submit(self, request: Request) -> trainer_pb2.Job:
        """Check a request, record the job and queue it; return the job (QUEUED). A request with the idempotency
        key of an earlier one returns that job (ConfigError if the request differs); ResourceExhaustedError when
        max_queued_jobs are waiting already."""
        with self._submit_lock:  # one at a time: two retries with one key must not both start a job
            return self._submit(request)

    def _submit(self, request: Request) -> trainer_pb2.Job:
        if self._stopping.is_set():
            raise ShuttingDownError("the trainer service is shutting down and accepts no new jobs")
        digest = hashlib.sha256(request.SerializeToString(deterministic=True)).hexdigest()
        if request.idempotency_key:
            with self._lock:
                earlier = next(
                    (e for e in self._entries.values() if e.request.idempotency_key == request.idempotency_key), None
                )
            if earlier is not None:
                if earlier.request_digest != digest:
                    raise ConfigError(
                        f"idempotency key {request.idempotency_key!r} was used by job {earlier.job.job_id} with a "
                        "different request; use a new key for a new job"
                    )
                log.info("job requested again", extra={"job_id": earlier.job.job_id})
                return self.get(earlier.job.job_id)
        with self._lock:
            if len(self._queue) >= self.config.max_queued_jobs:
                raise ResourceExhaustedError(
                    f"{len(self._queue)} jobs are waiting already (PNEUMONIA_TRAINER_MAX_QUEUED_JOBS); try again later"
                )
        job_id = new_job_id()
        request = effective_request(self.config, job_id, request)
        plan = plan_job(self.config, job_id, request)
        claims = plan.claims()
        self._check_claims(claims)
        check_inputs(self.store, self.config, plan, request)
        if isinstance(request, ClassifierRequest) and request.HasField("weights_checkpoint"):
            pin_weights(self.store, request)
        job = trainer_pb2.Job(job_id=job_id, kind=plan.kind, state=QUEUED, total_epochs=plan.options.epochs)
        if isinstance(plan.options, ClassifierTrainingConfig):
            job.total_folds = plan.options.k_folds
        job.created_at.GetCurrentTime()
        entry = JobEntry(job, request, request_digest=digest)
        self._persist(entry)  # a job that could not be recorded is not accepted
        self._claims[job_id] = claims
        with self._changed:
            self._entries[job_id] = entry
            self._queue.append(job_id)
            self._changed.notify_all()  # the worker
        log.info("job queued", extra={"job_id": job_id, "kind": trainer_pb2.JobKind.Name(plan.kind)})
        return self.get(job_id)

    def _check_claims(self, claims: set[tuple[str, ...]]) -> None:
        """ConflictError when a queued or running job owns any of `claims` (JobPlan.claims): two live jobs never
        write the same objects. A finished job's outputs may be written again (a GAN job continues another's)."""
        with self._lock:
            live = [entry for entry in self._entries.values() if entry.job.state in (QUEUED, RUNNING)]
        for entry in live:
            for claim in sorted(claims & self._claims_of(entry)):
                what = f"model archive {claim[1]!r}" if claim[0] == "archive" else f"output prefix {claim[1]!r}"
                state = common_pb2.JobState.Name(entry.job.state).removeprefix("JOB_STATE_").lower()
                raise ConflictError(
                    f"{what} belongs to job {entry.job.job_id} ({state}): wait for it, cancel it, or write elsewhere"
                )

    def _claims_of(self, entry: JobEntry) -> set[tuple[str, ...]]:
        """The claims of a recorded job (planned once; a job found at start is planned on first use)."""
        job_id = entry.job.job_id
        if job_id not in self._claims:
            try:
                self._claims[job_id] = plan_job(self.config, job_id, entry.request).claims()
            except PneumoniaError:  # a record planned under other settings: it claims nothing we can name
                self._claims[job_id] = set()
        return self._claims[job_id]

    def get(self, job_id: str) -> trainer_pb2.Job:
        with self._lock:
            return _copy(self._entry(job_id).job)

    def watch(self, job_id: str, check: Callable[[], None] = lambda: None) -> Iterator[trainer_pb2.Job]:
        """The job now and after every change until it ends. `check` runs between waits (raise to stop);
        ShuttingDownError once the service stops."""
        with self._lock:
            entry = self._entry(job_id)
        seen = -1
        while True:
            with self._changed:
                self._changed.wait_for(partial(_changed_since, entry, seen, self._stopping), WATCH_POLL_S)
                snapshot = _copy(entry.job) if entry.version != seen else None
                seen = entry.version
            if snapshot is not None:
                yield snapshot
                if snapshot.state in TERMINAL:
                    return
            if self._stopping.is_set():
                raise ShuttingDownError(
                    "the trainer service is shutting down; the job continues from its last checkpoint once it is "
                    "back: watch it again then"
                )
            check()

    def cancel(self, job_id: str) -> trainer_pb2.Job:
        """Cancel a queued job now, or ask a running one to stop at its next checkpoint; an ended job is unchanged."""
        with self._changed:
            entry = self._entry(job_id)
            if entry.job.state == QUEUED:
                self._queue.remove(job_id)
                self._finish_locked(entry, CANCELLED, "cancelled before it started")
            elif entry.job.state == RUNNING and not entry.cancel_requested:
                entry.cancel_requested = True
                self._change_locked(entry, message="cancelling: the job stops at its next checkpoint")
            else:
                return _copy(entry.job)
        self._commit(entry)
        log.info("job cancel requested", extra={"job_id": job_id})
        return self.get(job_id)

    # ---- internals

    def _entry(self, job_id: str) -> JobEntry:
        if not job_id:
            raise ConfigError("job_id is required")
        entry = self._entries.get(job_id)
        if entry is None:
            raise NotFoundError(f"no job {job_id!r}")
        return entry

    def _change_locked(self, entry: JobEntry, **fields: Any) -> None:
        """Set Job fields (metrics and outputs replace the old ones); hold the lock. Watchers learn of it by _commit."""
        for name, value in fields.items():
            if name == "metrics":
                entry.job.metrics.clear()
                entry.job.metrics.update(value)
            elif name == "outputs":
                del entry.job.outputs[:]
                entry.job.outputs.extend(ref_to_proto(ref) for ref in value)
            elif name == "model_archive":
                entry.job.model_archive.CopyFrom(ref_to_proto(value))
            elif name == "resumable":
                entry.resumable = value
            else:
                setattr(entry.job, name, value)

    def _commit(self, entry: JobEntry) -> None:
        """Store the job's record, then wake its watchers (also when storing failed: they see what the job did)."""
        try:
            self._persist(entry)
        finally:
            with self._changed:
                entry.version += 1
                self._changed.notify_all()

    def _finish_locked(self, entry: JobEntry, state: int, message: str) -> None:
        entry.job.finished_at.GetCurrentTime()
        self._change_locked(entry, state=state, message=message)
        log.info("job %s", common_pb2.JobState.Name(state), extra={"job_id": entry.job.job_id, "job_message": message})

    def update(self, entry: JobEntry, **fields: Any) -> None:
        """Change a job (see _change_locked), store its record and wake its watchers."""
        with self._changed:
            self._change_locked(entry, **fields)
        self._commit(entry)

    def _persist(self, entry: JobEntry) -> None:
        """Store the job's record as it is now (writes are serialized, so the last one holds the latest state)."""
        with self._persist_lock:
            with self._lock:
                data = entry.record()
            self.store.put_bytes(
                self.config.models_bucket, f"{RECORDS_PREFIX}{entry.job.job_id}.json", data, "application/json"
            )

    def should_stop(self, entry: JobEntry) -> bool:
        return entry.cancel_requested or self._stopping.is_set()

    def _next(self) -> JobEntry | None:
        """The next queued job, now RUNNING; None once the service stops."""
        with self._changed:
            self._changed.wait_for(lambda: self._queue or self._stopping.is_set())
            if self._stopping.is_set():
                return None
            entry = self._entries[self._queue.popleft()]
            if not entry.job.HasField("started_at"):
                entry.job.started_at.GetCurrentTime()
            entry.interrupted = False  # until a graceful shutdown says otherwise
            self._change_locked(entry, state=RUNNING, message="starting")
        return entry

    def _work(self) -> None:
        while (entry := self._next()) is not None:
            try:
                self._execute(entry)
            except Exception:  # storing the record of how it ended failed: keep serving the other jobs
                log.exception("job %s: could not store its record", entry.job.job_id)
        log.info("job worker stopped")

    def _execute(self, entry: JobEntry) -> None:
        job_id = entry.job.job_id
        log.info("job running", extra={"job_id": job_id, "resume": entry.resumable})
        try:
            self._commit(entry)  # RUNNING
            outputs, archive = JobRun(self, entry).run()
        except TrainingStopped:
            if not entry.cancel_requested:  # a shutdown: the record stays RUNNING and resumable for the next start
                entry.interrupted = True  # not a crash
                self.update(entry, message="interrupted by a service shutdown; resumes when the service restarts")
                log.info("job interrupted by shutdown", extra={"job_id": job_id, "resumable": entry.resumable})
                return  # its local files stay: a restart on this machine downloads less
            with self._changed:
                self._finish_locked(entry, CANCELLED, f"cancelled after epoch {entry.job.epoch}")
        except Exception as exc:
            if isinstance(exc, PneumoniaError | ValueError):
                message = str(exc)
            else:
                log.exception("job %s failed", job_id)
                message = f"internal error ({type(exc).__name__}); the trainer's log has the details"
            with self._changed:
                self._finish_locked(entry, FAILED, message)
        else:
            with self._changed:
                self._change_locked(entry, outputs=outputs, **({"model_archive": archive} if archive else {}))
                self._finish_locked(entry, SUCCEEDED, "")
        shutil.rmtree(job_dirs(self.config, job_id).root, ignore_errors=True)
        self._commit(entry)  # the record holds the end before any watcher sees it


def _changed_since(entry: JobEntry, version: int, stopping: threading.Event) -> bool:
    return entry.version != version or stopping.is_set()


def _copy(job: trainer_pb2.Job) -> trainer_pb2.Job:
    copy = trainer_pb2.Job()
    copy.CopyFrom(job)
    return copy
