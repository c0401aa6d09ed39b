"""Training jobs: requests checked up front, a FIFO queue run by one worker thread, progress, cancellation, restarts.

A job runs the CLI's own code in-process (train_gan.train, train_classifier.train_strategy) on local copies of its
inputs, with an argparse Namespace parsed from the request exactly as `pneumonia train-gan/train-classifier` would
parse it (a zero field leaves the CLI's default). After every epoch the job's resumable state is uploaded and its
record rewritten, so a restarted service continues it from there (--resume) instead of from scratch.

Stored objects (P = the request's output_prefix, default jobs/<job_id>):

    models bucket   trainer-jobs/<job_id>.json   the job record: {"format_version", "job", "request", "resumable"}
                    P/...                        --model-dir. GAN: gan/checkpoint_last.pth (every epoch),
                                                 gan/generator_final.pth, gan/discriminator_final.pth. Classifier:
                                                 <strategy>_<arch>_training_state.pth (every epoch),
                                                 fold_<k>_<strategy>_<arch>.pth, <strategy>_<arch>.pth
                    model-store/<name>.mar       a classifier job's model archive (model_archive_name)
    results bucket  P/metrics/...                --results-dir (histories, CV summary, final metrics)
                    P/figures/...                --figures-dir (loss and training curves, comparisons)
                    P/gan_images/epoch_NNN.png   train-gan's --output-dir (sample grids)

Local scratch (PNEUMONIA_TRAINER_WORK_DIR): datasets/<bucket>/<prefix>/ and synthetic/<bucket>/<prefix>/ are caches
kept equal to their prefix (the same path for every job, so a GAN run continued by another job sees the same
--data-dir); jobs/<job_id>/ holds a running job's files and is removed when the job ends.

One trainer service per store: two services sharing a models bucket would both pick up the same jobs on restart.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import mimetypes
import re
import shutil
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from google.protobuf import descriptor, json_format
from pneumonia.v1 import common_pb2, trainer_pb2

from services.trainer import train_classifier, train_gan
from services.trainer.config import TrainerConfig
from services.trainer.hooks import TrainingStopped, stop_if_asked
from shared.datasets import DATASETS
from shared.errors import CheckpointError, ConfigError, PneumoniaError
from shared.models.classifier import SMALL_INPUT_MAX_SIZE, imagenet_weights_path
from shared.serving.archive import build_model_archive, check_model_name
from shared.storage import NotFoundError, ObjectRef, ObjectStore
from shared.storage.base import validate_bucket, validate_key, validate_prefix
from shared.storage.proto import ref_from_proto, ref_to_proto
from shared.storage.sync import download_prefix
from shared.synthetic import MANIFEST_NAME

log = logging.getLogger(__name__)

GanRequest = trainer_pb2.StartGanJobRequest
ClassifierRequest = trainer_pb2.StartClassifierJobRequest
Request = GanRequest | ClassifierRequest

RECORDS_PREFIX = "trainer-jobs/"
MODEL_STORE_PREFIX = "model-store/"
RESERVED_PREFIXES = (RECORDS_PREFIX.rstrip("/"), MODEL_STORE_PREFIX.rstrip("/"))
RECORD_FORMAT = 1
GAN_STATE_KEY = "gan/checkpoint_last.pth"  # under P/: what a GAN job resumes from
WATCH_POLL_S = 0.5  # how often a WatchJob stream checks that its client is still there
MAX_SEED = 2**31 - 1  # numpy's global seed must stay below 2**32, and the classifier adds the fold number

QUEUED, RUNNING = common_pb2.JOB_STATE_QUEUED, common_pb2.JOB_STATE_RUNNING
SUCCEEDED, FAILED = common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_FAILED
CANCELLED = common_pb2.JOB_STATE_CANCELLED
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})

# Request enums -> CLI choices (None: leave the CLI's default).
GAN_LOSSES = {
    trainer_pb2.GAN_LOSS_UNSPECIFIED: None,
    trainer_pb2.GAN_LOSS_BCE: "bce",
    trainer_pb2.GAN_LOSS_WGAN_GP: "wgan-gp",
}
GAN_TRAIN_ON = {
    trainer_pb2.GAN_TRAIN_ON_UNSPECIFIED: None,
    trainer_pb2.GAN_TRAIN_ON_POSITIVE: "positive",
    trainer_pb2.GAN_TRAIN_ON_ALL: "all",
}
CLASS_BALANCES = {
    trainer_pb2.CLASS_BALANCE_UNSPECIFIED: None,
    trainer_pb2.CLASS_BALANCE_WEIGHTED_LOSS: "weighted-loss",
    trainer_pb2.CLASS_BALANCE_SAMPLER: "sampler",
    trainer_pb2.CLASS_BALANCE_NONE: "none",
}
SCHEDULERS = {
    trainer_pb2.LR_SCHEDULER_UNSPECIFIED: None,
    trainer_pb2.LR_SCHEDULER_NONE: "none",
    trainer_pb2.LR_SCHEDULER_ONECYCLE: "onecycle",
}
# Request field -> CLI flag, for the options passed only when non-zero.
GAN_OPTIONS = {
    "epochs": "--epochs",
    "batch_size": "--batch-size",
    "lr": "--lr",
    "beta1": "--beta1",
    "latent_dim": "--latent-dim",
    "num_channels": "--num-channels",
    "image_size": "--image-size",
    "feature_maps_g": "--feature-maps-g",
    "feature_maps_d": "--feature-maps-d",
    "gp_weight": "--gp-weight",
    "n_critic": "--n-critic",
    "seed": "--seed",
    "sample_every": "--sample-every",
    "vis_batch_size": "--vis-batch-size",
}
CLASSIFIER_OPTIONS = {
    "epochs": "--epochs",
    "batch_size": "--batch-size",
    "lr": "--lr",
    "k_folds": "--k-folds",
    "curriculum_schedule": "--curriculum-schedule",
    "arch": "--arch",
    "image_size": "--image-size",
    "channels": "--channels",
    "seed": "--seed",
    "val_fraction": "--val-fraction",
}
NUMERIC_FIELD_TYPES = (
    descriptor.FieldDescriptor.TYPE_INT32,
    descriptor.FieldDescriptor.TYPE_INT64,
    descriptor.FieldDescriptor.TYPE_DOUBLE,
)
GAN_METRICS = ("loss_d", "loss_g", "d_real", "d_fake")
CLASSIFIER_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "val_auroc", "synthetic_ratio", "lr")


class ShuttingDownError(PneumoniaError):
    """The service is stopping: it accepts no new jobs and ends watches (the running job resumes after a restart)."""


# ---------------------------------------------------------------- from a request to a plan


class _RaisingParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are ConfigErrors instead of exiting the process."""

    def error(self, message: str) -> Any:  # argparse's signature says NoReturn; raising satisfies it
        raise ConfigError(message)


def parse_cli(add_arguments: Callable[[argparse.ArgumentParser], None], argv: list[str]) -> argparse.Namespace:
    """The Namespace the CLI's parser gives for `argv` (its defaults for every flag left out)."""
    parser = _RaisingParser(add_help=False)
    add_arguments(parser)
    return parser.parse_args(argv)


def _choice(mapping: dict[int, str | None], value: int, name: str) -> str | None:
    if value not in mapping:
        raise ConfigError(f"{name}: unknown value {value}")
    return mapping[value]


def _option_flags(request: Request, options: dict[str, str]) -> list[str]:
    flags: list[str] = []
    for name, flag in options.items():
        value = getattr(request, name)
        if value:
            flags.append(f"{flag}={value}")  # one word: a value starting with '-' stays a value
    if request.HasField("max_images"):
        flags.append(f"--max-images={request.max_images}")
    return flags


def check_not_negative(request: Request) -> None:
    """ConfigError for a negative or non-finite number anywhere in the request's own fields."""
    for field_descriptor, value in request.ListFields():
        if field_descriptor.type in NUMERIC_FIELD_TYPES and not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"{field_descriptor.name} must be a finite number >= 0, got {value}")
    if request.seed > MAX_SEED:
        raise ConfigError(f"seed must be at most {MAX_SEED}, got {request.seed}")


def check_output_prefix(prefix: str) -> str:
    """The output prefix without a trailing '/'; InvalidKeyError/ConfigError for one that cannot be used."""
    prefix = prefix.rstrip("/")
    validate_key(prefix)
    if prefix.split("/")[0] in RESERVED_PREFIXES:
        raise ConfigError(f"output_prefix {prefix!r}: {', '.join(RESERVED_PREFIXES)} are reserved by the services")
    return prefix


def check_weights(args: argparse.Namespace) -> None:
    """The refusals build_classifier would make only once the job runs (frozen random backbone, no ImageNet file)."""
    frozen = not args.unfreeze
    if args.weights == "none" and frozen:
        raise ConfigError("a frozen randomly initialised backbone cannot learn: set unfreeze (or pretrained weights)")
    if args.weights == "imagenet":
        if frozen and args.image_size <= SMALL_INPUT_MAX_SIZE:
            raise ConfigError(
                f"image_size {args.image_size} replaces the pretrained 7x7 stem with a new 3x3 one, which cannot stay "
                "frozen: set unfreeze"
            )
        if not imagenet_weights_path(args.arch).is_file():
            raise ConfigError(
                f"ImageNet weights for {args.arch} are not in the trainer's local torch hub cache: use weights "
                "'none' with unfreeze, or a weights_checkpoint"
            )


@dataclass(frozen=True)
class JobDirs:
    """A job's local folders under WORK_DIR/jobs/<job_id>/."""

    root: Path

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def outputs(self) -> Path:
        return self.root / "outputs"

    @property
    def weights(self) -> Path:
        return self.root / "weights"

    @property
    def archive(self) -> Path:
        return self.root / "archive"


def cache_dir(config: TrainerConfig, kind: str, bucket: str, prefix: str) -> Path:
    """Where a stored prefix is mirrored: the same path for every job (it is part of a GAN checkpoint's config)."""
    return config.work_dir / kind / bucket / Path(*prefix.strip("/").split("/"))


@dataclass(frozen=True)
class JobPlan:
    """What running a job takes, derived from its (effective) request alone."""

    kind: int  # trainer_pb2.JOB_KIND_*
    args: argparse.Namespace  # the CLI's parsed options, local paths included
    dirs: JobDirs
    output_prefix: str  # P, without a trailing '/'
    dataset: tuple[str, str]  # (bucket, prefix)
    synthetic: tuple[str, str] | None = None
    weights: ObjectRef | None = None
    archive_name: str = ""

    def destinations(self, config: TrainerConfig) -> list[tuple[Path, str, str]]:
        """(local folder, bucket, key prefix) of every output folder, per the layout in the module docstring."""
        p = self.output_prefix
        return [
            (self.dirs.models, config.models_bucket, f"{p}/"),
            (self.dirs.metrics, config.results_bucket, f"{p}/metrics/"),
            (self.dirs.figures, config.results_bucket, f"{p}/figures/"),
            (self.dirs.outputs, config.results_bucket, f"{p}/"),
        ]


def effective_request(config: TrainerConfig, job_id: str, request: Request) -> Request:
    """A copy of `request` with the service's defaults filled in (buckets, output prefix), as it is recorded."""
    effective = type(request)()
    effective.CopyFrom(request)
    effective.output_prefix = check_output_prefix(effective.output_prefix or f"jobs/{job_id}")
    if not effective.dataset.data.bucket:
        effective.dataset.data.bucket = config.datasets_bucket
    if isinstance(effective, ClassifierRequest):
        if effective.use_synthetic and not effective.synthetic.bucket:
            effective.synthetic.bucket = config.synthetic_bucket
        if effective.HasField("weights_checkpoint") and not effective.weights_checkpoint.bucket:
            effective.weights_checkpoint.bucket = config.models_bucket
    return effective


def plan_job(config: TrainerConfig, job_id: str, request: Request) -> JobPlan:
    """Check an effective request and turn it into a JobPlan; ConfigError/InvalidKeyError naming what is wrong."""
    check_not_negative(request)
    if request.dataset.name not in DATASETS:
        raise ConfigError(f"dataset.name must be one of {', '.join(DATASETS)}, got {request.dataset.name!r}")
    dataset = (validate_bucket(request.dataset.data.bucket), validate_prefix(request.dataset.data.prefix))
    dirs = JobDirs(config.work_dir / "jobs" / job_id)
    common = [
        "--dataset", request.dataset.name, "--data-dir", str(cache_dir(config, "datasets", *dataset)),
        "--model-dir", str(dirs.models), "--results-dir", str(dirs.metrics), "--figures-dir", str(dirs.figures),
        "--workers", str(config.loader_workers),
        *(["--cpu"] if request.cpu or config.force_cpu else []),
    ]  # fmt: skip
    if isinstance(request, GanRequest):
        return _plan_gan(request, dirs, dataset, common)
    return _plan_classifier(config, request, dirs, dataset, common)


def _plan_gan(request: GanRequest, dirs: JobDirs, dataset: tuple[str, str], common: list[str]) -> JobPlan:
    argv = [*common, "--output-dir", str(dirs.outputs), *_option_flags(request, GAN_OPTIONS)]
    loss = _choice(GAN_LOSSES, request.loss, "loss")
    train_on = _choice(GAN_TRAIN_ON, request.train_on, "train_on")
    argv += ["--loss", loss] if loss else []
    argv += ["--train-on", train_on] if train_on else []
    argv += ["--conditional"] if request.conditional else []
    args = parse_cli(train_gan.add_arguments, argv)
    train_gan.check_arguments(args)
    return JobPlan(trainer_pb2.JOB_KIND_GAN, args, dirs, request.output_prefix, dataset)


def _plan_classifier(
    config: TrainerConfig, request: ClassifierRequest, dirs: JobDirs, dataset: tuple[str, str], common: list[str]
) -> JobPlan:
    argv = [*common, *_option_flags(request, CLASSIFIER_OPTIONS)]
    for name, mapping, flag in (
        ("class_balance", CLASS_BALANCES, "--class-balance"),
        ("scheduler", SCHEDULERS, "--scheduler"),
    ):
        choice = _choice(mapping, getattr(request, name), name)
        argv += [flag, choice] if choice else []
    for name in ("unfreeze", "use_synthetic", "use_curriculum"):
        argv += [f"--{name.replace('_', '-')}"] if getattr(request, name) else []
    synthetic = weights = None
    if request.use_synthetic:
        synthetic = (validate_bucket(request.synthetic.bucket), validate_prefix(request.synthetic.prefix))
        argv += ["--synthetic-dir", str(cache_dir(config, "synthetic", *synthetic))]
    if request.HasField("weights_checkpoint"):
        ref = request.weights_checkpoint
        weights = ObjectRef(validate_bucket(ref.bucket), validate_key(ref.key), ref.sha256, ref.size)
        argv += ["--weights", str(dirs.weights / Path(ref.key).name)]
    elif request.weights:
        if request.weights not in ("imagenet", "none"):
            raise ConfigError(f"weights must be 'imagenet' or 'none' (or weights_checkpoint), got {request.weights!r}")
        argv += ["--weights", request.weights]
    if request.model_archive_name:
        check_model_name(request.model_archive_name)
    args = parse_cli(train_classifier.add_arguments, argv)
    train_classifier.check_args(args)
    if weights is None:
        check_weights(args)
    return JobPlan(
        trainer_pb2.JOB_KIND_CLASSIFIER,
        args,
        dirs,
        request.output_prefix,
        dataset,
        synthetic,
        weights,
        request.model_archive_name,
    )


def check_inputs(store: ObjectStore, config: TrainerConfig, plan: JobPlan, request: Request) -> None:
    """NotFoundError for an input that is not stored (StorageUnavailableError when storage is down)."""
    bucket, prefix = plan.dataset
    if next(iter(store.list(bucket, _as_folder(prefix))), None) is None:
        raise NotFoundError(f"dataset {request.dataset.name!r}: no objects under s3://{bucket}/{_as_folder(prefix)}")
    if plan.synthetic is not None:
        bucket, prefix = plan.synthetic
        if not store.exists(bucket, _as_folder(prefix) + MANIFEST_NAME):
            raise NotFoundError(f"synthetic: no {MANIFEST_NAME} under s3://{bucket}/{_as_folder(prefix)}")
    if isinstance(request, GanRequest) and request.resume:
        key = f"{plan.output_prefix}/{GAN_STATE_KEY}"
        if not store.exists(config.models_bucket, key):
            raise NotFoundError(f"resume: no GAN run to continue at s3://{config.models_bucket}/{key}")


def pin_weights(store: ObjectStore, request: ClassifierRequest) -> None:
    """Record the weights checkpoint's sha256 (a restart then uses the same bytes): NotFoundError when it is not
    stored, CheckpointError when its sha256 is not the requested one."""
    ref = request.weights_checkpoint
    stored = store.stat(ref.bucket, ref.key)
    if ref.sha256 and ref.sha256 != stored.sha256:
        raise CheckpointError(f"{stored.uri} has sha256 {stored.sha256}, not the requested {ref.sha256}")
    ref.sha256, ref.size = stored.sha256, stored.size


def _as_folder(prefix: str) -> str:
    return prefix if not prefix or prefix.endswith("/") else prefix + "/"


# ---------------------------------------------------------------- moving files


def fetch_prefix(
    store: ObjectStore, bucket: str, prefix: str, dest: Path, check: Callable[[], None] | None = None
) -> None:
    """Make `dest` an exact copy of the prefix: download what changed, delete local files no longer stored."""
    refs = download_prefix(store, bucket, prefix, dest, check)
    folder = _as_folder(prefix)
    wanted = {dest / ref.key[len(folder) :].lstrip("/") for ref in refs}
    for path in [p for p in dest.rglob("*") if p.is_file() and p not in wanted]:
        path.unlink()


class OutputSync:
    """Uploads the files of a job's local output folders, each once per change, and remembers what is stored."""

    def __init__(self, store: ObjectStore, destinations: list[tuple[Path, str, str]], stored: list[ObjectRef]):
        self.store = store
        self.destinations = destinations
        self.refs = {(ref.bucket, ref.key): ref for ref in stored}
        self._uploaded: dict[Path, tuple[int, int]] = {}

    def sync(self) -> int:
        """Upload every new or changed file; return how many."""
        count = 0
        for folder, bucket, prefix in self.destinations:
            if not folder.is_dir():
                continue
            self.store.ensure_bucket(bucket)
            for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
                stat = path.stat()
                signature = (stat.st_mtime_ns, stat.st_size)
                if self._uploaded.get(path) == signature:
                    continue
                key = prefix + path.relative_to(folder).as_posix()
                content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
                self.refs[(bucket, key)] = self.store.put_file(bucket, key, path, content_type)
                self._uploaded[path] = signature
                count += 1
        return count

    def outputs(self) -> list[ObjectRef]:
        return [self.refs[k] for k in sorted(self.refs)]


# ---------------------------------------------------------------- jobs


@dataclass
class JobEntry:
    """A job as the manager keeps it; `version` rises with every change (what WatchJob waits for)."""

    job: trainer_pb2.Job
    request: Request
    resumable: bool = False  # this job has stored a state it can resume from
    cancel_requested: bool = False
    version: int = 0

    def record(self) -> bytes:
        """The JSON stored as trainer-jobs/<job_id>.json."""
        data = {
            "format_version": RECORD_FORMAT,
            "job": json_format.MessageToDict(self.job, preserving_proto_field_name=True),
            "request": json_format.MessageToDict(self.request, preserving_proto_field_name=True),
            "resumable": self.resumable,
            "cancel_requested": self.cancel_requested,
        }
        return (json.dumps(data, indent=1) + "\n").encode()

    @classmethod
    def from_record(cls, data: bytes) -> JobEntry:
        record = json.loads(data)
        job = json_format.ParseDict(record["job"], trainer_pb2.Job())
        request_type = GanRequest if job.kind == trainer_pb2.JOB_KIND_GAN else ClassifierRequest
        request = json_format.ParseDict(record["request"], request_type())
        return cls(job, request, bool(record["resumable"]), bool(record.get("cancel_requested", False)))


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
        self._stopping = threading.Event()
        self._worker: threading.Thread | None = None

    # ---- lifecycle

    def start(self) -> None:
        """Load the stored job records, queue again the jobs a previous run left queued or running, start working."""
        self.store.ensure_bucket(self.config.models_bucket)
        entries = []
        for ref in self.store.list(self.config.models_bucket, RECORDS_PREFIX):
            try:
                entries.append(JobEntry.from_record(self.store.get_bytes(ref.bucket, ref.key)))
            except (ValueError, KeyError, json_format.ParseError) as exc:
                log.error("skipping unreadable job record %s: %s", ref.uri, exc)
        changed = []
        for entry in sorted(entries, key=lambda e: e.job.created_at.ToNanoseconds()):
            self._entries[entry.job.job_id] = entry
            if entry.job.state == RUNNING and entry.cancel_requested:  # cancelled, then shut down before it stopped
                self._finish_locked(entry, CANCELLED, f"cancelled after epoch {entry.job.epoch}")
                changed.append(entry)
            elif entry.job.state in (QUEUED, RUNNING):
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
        """Check a request, record the job and queue it; return the job (QUEUED)."""
        if self._stopping.is_set():
            raise ShuttingDownError("the trainer service is shutting down and accepts no new jobs")
        job_id = uuid.uuid4().hex
        request = effective_request(self.config, job_id, request)
        plan = plan_job(self.config, job_id, request)
        check_inputs(self.store, self.config, plan, request)
        if isinstance(request, ClassifierRequest) and request.HasField("weights_checkpoint"):
            pin_weights(self.store, request)
        job = trainer_pb2.Job(job_id=job_id, kind=plan.kind, state=QUEUED, total_epochs=plan.args.epochs)
        if plan.kind == trainer_pb2.JOB_KIND_CLASSIFIER:
            job.total_folds = plan.args.k_folds
        job.created_at.GetCurrentTime()
        entry = JobEntry(job, request)
        self._persist(entry)  # a job that could not be recorded is not accepted
        with self._changed:
            self._entries[job_id] = entry
            self._queue.append(job_id)
            self._changed.notify_all()  # the worker
        log.info("job queued", extra={"job_id": job_id, "kind": trainer_pb2.JobKind.Name(plan.kind)})
        return self.get(job_id)

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
        shutil.rmtree(JobDirs(self.config.work_dir / "jobs" / job_id).root, ignore_errors=True)
        self._commit(entry)  # the record holds the end before any watcher sees it


def _changed_since(entry: JobEntry, version: int, stopping: threading.Event) -> bool:
    return entry.version != version or stopping.is_set()


def _copy(job: trainer_pb2.Job) -> trainer_pb2.Job:
    copy = trainer_pb2.Job()
    copy.CopyFrom(job)
    return copy


class JobRun:
    """One attempt at running a job: fetch inputs, restore its state when resuming, train, store the outputs."""

    def __init__(self, manager: JobManager, entry: JobEntry) -> None:
        self.manager = manager
        self.config = manager.config
        self.store = manager.store
        self.entry = entry
        self.request = entry.request
        self.plan = plan_job(self.config, entry.job.job_id, entry.request)
        stored = [ref_from_proto(ref) for ref in entry.job.outputs]
        self.sync = OutputSync(self.store, self.plan.destinations(self.config), stored)

    def run(self) -> tuple[list[ObjectRef], ObjectRef | None]:
        """(stored outputs, model archive or None); TrainingStopped when cancelled or shut down."""
        plan, args = self.plan, self.plan.args
        resume = self.entry.resumable or (isinstance(self.request, GanRequest) and self.request.resume)
        if not resume:
            shutil.rmtree(plan.dirs.root, ignore_errors=True)  # leftovers of an attempt that stored nothing
        self.manager.update(self.entry, message="fetching the inputs")
        self.fetch_inputs()
        if resume:
            self.restore_state()
        args.resume = resume
        self.manager.update(self.entry, message="resuming from its last checkpoint" if resume else "training")
        should_stop = partial(self.manager.should_stop, self.entry)
        if plan.kind == trainer_pb2.JOB_KIND_GAN:
            train_gan.train(args, progress=self.on_epoch, should_stop=should_stop)
        else:
            train_classifier.train_strategy(args, progress=self.on_epoch, should_stop=should_stop)
        self.manager.update(self.entry, message="storing the outputs")
        self.sync.sync()
        archive = self.store_model_archive() if plan.archive_name else None
        return self.sync.outputs(), archive

    def check(self) -> None:
        stop_if_asked(partial(self.manager.should_stop, self.entry), "while fetching the inputs")

    def fetch_inputs(self) -> None:
        plan = self.plan
        fetch_prefix(self.store, *plan.dataset, Path(plan.args.data_dir), self.check)
        if plan.synthetic is not None:
            fetch_prefix(self.store, *plan.synthetic, Path(plan.args.synthetic_dir), self.check)
        if plan.weights is not None:
            path = Path(plan.args.weights)
            got = self.store.get_file(plan.weights.bucket, plan.weights.key, path)
            if plan.weights.sha256 and got.sha256 != plan.weights.sha256:
                path.unlink(missing_ok=True)
                raise ConfigError(f"{got.uri} was replaced after the job was accepted (sha256 {got.sha256})")

    def restore_state(self) -> None:
        """Download the resumable state stored under P/ into the local model folder."""
        bucket, prefix, models = self.config.models_bucket, f"{self.plan.output_prefix}/", self.plan.dirs.models
        if self.plan.kind == trainer_pb2.JOB_KIND_GAN:
            self.store.get_file(bucket, prefix + GAN_STATE_KEY, models / GAN_STATE_KEY)
            return
        args = self.plan.args
        strategy = train_classifier.strategy_name(args)
        names = re.compile(rf"(fold_\d+_)?{re.escape(strategy)}_{re.escape(args.arch)}(_training_state)?\.pth")
        for ref in self.store.list(bucket, prefix):
            name = ref.key[len(prefix) :]
            if names.fullmatch(name):
                self.store.get_file(bucket, ref.key, models / name)

    def on_epoch(self, event: dict[str, Any]) -> None:
        """After every epoch's checkpoint: store the new files (the resumable state first of all), then the record."""
        self.sync.sync()
        if self.plan.kind == trainer_pb2.JOB_KIND_GAN:
            fields: dict[str, Any] = {"epoch": event["epoch"], "total_epochs": event["epochs"]}
            names = GAN_METRICS
        else:
            fields = {
                "epoch": event["epoch"] + 1,
                "total_epochs": event["epochs"],
                "fold": event["fold"],
                "total_folds": event["num_folds"],
            }
            names = CLASSIFIER_METRICS
        metrics = {name: float(event[name]) for name in names if event.get(name) is not None}
        message = "cancelling: the job stops at its next checkpoint" if self.entry.cancel_requested else "training"
        self.manager.update(
            self.entry, resumable=True, outputs=self.sync.outputs(), metrics=metrics, message=message, **fields
        )

    def store_model_archive(self) -> ObjectRef:
        """Pack the strategy's final model as <name>.mar and store it as model-store/<name>.mar."""
        args, name = self.plan.args, self.plan.archive_name
        self.manager.update(self.entry, message=f"building the model archive {name}.mar")
        checkpoint = Path(args.model_dir) / f"{train_classifier.strategy_name(args)}_{args.arch}.pth"
        path = build_model_archive(checkpoint, self.plan.dirs.archive, name)
        self.store.ensure_bucket(self.config.models_bucket)
        return self.store.put_file(self.config.models_bucket, f"{MODEL_STORE_PREFIX}{name}.mar", path)
