"""From a trainer request to a job plan: the request checked, its step config built, its local folders and inputs.

A job runs the CLI's own code (train_gan.train, train_classifier.train_strategy) with the step config built from
the request by `Config.from_proto` (a zero field keeps the CLI's default), its paths those of the job's local
folders (JobDirs) and caches (cache_dir).

Stored objects (P = the request's output_prefix, default jobs/<job_id>):

    models bucket   trainer-jobs/<job_id>.json   the job record: {"format_version", "job", "request", "resumable"}
                    P/...                        GAN: MODEL_DIR/gan/, i.e. P/checkpoint_last.pth (every epoch),
                                                 P/generator_final.pth, P/discriminator_final.pth (jobs before the
                                                 fix kept them under P/gan/). Classifier: MODEL_DIR, i.e.
                                                 P/<strategy>_<arch>_training_state.pth (every epoch),
                                                 P/fold_<k>_<strategy>_<arch>.pth, P/<strategy>_<arch>.pth
                    model-store/<name>.mar       a classifier job's model archive (model_archive_name)
    results bucket  P/metrics/...                RESULTS_DIR (histories, CV summary, final metrics)
                    P/figures/...                FIGURES_DIR (loss and training curves, comparisons)
                    P/gan_images/epoch_NNN.png   train-gan's OUTPUT_DIR (sample grids)

Local scratch (PNEUMONIA_TRAINER_WORK_DIR): datasets/<bucket>/<prefix>/ and synthetic/<bucket>/<prefix>/ are caches
kept equal to their prefix (the same path for every job, so a GAN run continued by another job sees the same
DATA_DIR); jobs/<job_id>/ holds a running job's files and is removed when the job ends.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from pathlib import Path

from pneumonia_proto.v1 import trainer_pb2

from services.trainer.config import TrainerConfig
from services.trainer.sync import as_folder
from shared import layout
from shared.configs import ClassifierTrainingConfig, GanTrainingConfig
from shared.datasets import DATASETS
from shared.errors import CheckpointError, ConfigError
from shared.models.classifier import SMALL_INPUT_MAX_SIZE, imagenet_weights_path
from shared.serving.archive import check_model_name
from shared.storage import NotFoundError, ObjectRef, ObjectStore
from shared.storage.base import validate_bucket, validate_key, validate_prefix
from shared.synthetic import MANIFEST_NAME

GanRequest = trainer_pb2.StartGanJobRequest
ClassifierRequest = trainer_pb2.StartClassifierJobRequest
Request = GanRequest | ClassifierRequest
StepOptions = GanTrainingConfig | ClassifierTrainingConfig

RECORDS_PREFIX = "trainer-jobs/"
MODEL_STORE_PREFIX = "model-store/"
RESERVED_PREFIXES = (RECORDS_PREFIX.rstrip("/"), MODEL_STORE_PREFIX.rstrip("/"))
GAN_STATE_KEY = layout.GAN_CHECKPOINT  # under P/: what a GAN job resumes from
LEGACY_GAN_STATE_KEY = f"{layout.GAN_DIR}/{layout.GAN_CHECKPOINT}"  # where jobs before the gan/gan/ fix kept it
JOB_ID = re.compile(r"[0-9a-f]{32}")  # what new_job_id makes; nothing else is a job id


def new_job_id() -> str:
    """A new job's id: a random UUID as 32 lowercase hex digits (a safe file name and object key segment)."""
    return uuid.uuid4().hex


def check_job_id(job_id: object) -> str:
    """`job_id` if it is one new_job_id could have made; ConfigError otherwise. A job id read back (a stored record)
    is joined into local paths (JobDirs) and object keys: '..', '/etc' or 'a/b' must never get that far."""
    if not isinstance(job_id, str) or not JOB_ID.fullmatch(job_id):
        raise ConfigError(f"job id {job_id!r} is not one the trainer makes (32 lowercase hex digits)")
    return job_id


def check_output_prefix(prefix: str) -> str:
    """The output prefix without a trailing '/'; InvalidKeyError/ConfigError for one that cannot be used."""
    prefix = prefix.rstrip("/")
    validate_key(prefix)
    if prefix.split("/")[0] in RESERVED_PREFIXES:
        raise ConfigError(f"output_prefix {prefix!r}: {', '.join(RESERVED_PREFIXES)} are reserved by the services")
    return prefix


def check_weights(options: ClassifierTrainingConfig) -> None:
    """The refusals build_classifier would make only once the job runs (frozen random backbone, no ImageNet file)."""
    frozen = not options.unfreeze
    if options.weights == "none" and frozen:
        raise ConfigError("a frozen randomly initialised backbone cannot learn: set unfreeze (or pretrained weights)")
    if options.weights == "imagenet":
        if frozen and options.image_size <= SMALL_INPUT_MAX_SIZE:
            raise ConfigError(
                f"image_size {options.image_size} replaces the pretrained 7x7 stem with a new 3x3 one, which cannot "
                "stay frozen: set unfreeze"
            )
        if not imagenet_weights_path(options.arch).is_file():
            raise ConfigError(
                f"ImageNet weights for {options.arch} are not in the trainer's local torch hub cache: use weights "
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


def job_dirs(config: TrainerConfig, job_id: str) -> JobDirs:
    """The local folders of job `job_id` (checked: check_job_id), WORK_DIR/jobs/<job_id>/."""
    return JobDirs(config.work_dir / "jobs" / check_job_id(job_id))


def cache_dir(config: TrainerConfig, kind: str, bucket: str, prefix: str) -> Path:
    """Where a stored prefix is mirrored: the same path for every job (it is part of a GAN checkpoint's config)."""
    return config.work_dir / kind / bucket / Path(*prefix.strip("/").split("/"))


@dataclass(frozen=True)
class JobPlan:
    """What running a job takes, derived from its (effective) request alone."""

    kind: int  # trainer_pb2.JOB_KIND_*
    options: StepOptions  # the step's config, local paths included
    dirs: JobDirs
    output_prefix: str  # P, without a trailing '/'
    dataset: tuple[str, str]  # (bucket, prefix)
    synthetic: tuple[str, str] | None = None
    weights: ObjectRef | None = None
    archive_name: str = ""

    def claims(self) -> set[tuple[str, ...]]:
        """What this job's outputs are, as names no two live jobs may share: its output prefix (a classifier job:
        the prefix, run name and repeat, since the strategies of one experiment share a prefix and write their own
        files) and its model archive."""
        if isinstance(self.options, ClassifierTrainingConfig):
            outputs = ("classifier", self.output_prefix, self.options.strategy, str(self.options.repeat))
        else:
            outputs = ("gan", self.output_prefix)
        return {outputs} | ({("archive", self.archive_name)} if self.archive_name else set())

    def destinations(self, config: TrainerConfig) -> list[tuple[Path, str, str]]:
        """(local folder, bucket, key prefix) of every output folder, per the layout in the module docstring."""
        p = self.output_prefix
        models = self.dirs.models / layout.GAN_DIR if self.kind == trainer_pb2.JOB_KIND_GAN else self.dirs.models
        return [
            (models, config.models_bucket, f"{p}/"),
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
    if request.dataset.name not in DATASETS:
        raise ConfigError(f"dataset.name must be one of {', '.join(DATASETS)}, got {request.dataset.name!r}")
    dataset = (validate_bucket(request.dataset.data.bucket), validate_prefix(request.dataset.data.prefix))
    dirs = job_dirs(config, job_id)
    common = {
        "dataset": request.dataset.name,
        "data_dir": str(cache_dir(config, "datasets", *dataset)),
        "model_dir": str(dirs.models),
        "results_dir": str(dirs.metrics),
        "figures_dir": str(dirs.figures),
        "workers": config.loader_workers,
        "cpu": request.cpu or config.force_cpu,
    }
    if isinstance(request, GanRequest):
        options = GanTrainingConfig.from_proto(request, output_dir=str(dirs.outputs), **common)
        return JobPlan(trainer_pb2.JOB_KIND_GAN, options, dirs, request.output_prefix, dataset)
    return _plan_classifier(config, request, dirs, dataset, common)


def _plan_classifier(
    config: TrainerConfig, request: ClassifierRequest, dirs: JobDirs, dataset: tuple[str, str], common: dict
) -> JobPlan:
    synthetic = weights = None
    if request.use_synthetic:
        synthetic = (validate_bucket(request.synthetic.bucket), validate_prefix(request.synthetic.prefix))
        common["synthetic_dir"] = str(cache_dir(config, "synthetic", *synthetic))
    if request.HasField("weights_checkpoint"):
        ref = request.weights_checkpoint
        weights = ObjectRef(validate_bucket(ref.bucket), validate_key(ref.key), ref.sha256, ref.size)
        common["weights"] = str(dirs.weights / Path(ref.key).name)
    elif request.weights and request.weights not in ("imagenet", "none"):
        raise ConfigError(f"weights must be 'imagenet' or 'none' (or weights_checkpoint), got {request.weights!r}")
    if request.model_archive_name:
        check_model_name(request.model_archive_name)
    options = ClassifierTrainingConfig.from_proto(request, **common)
    if weights is None:
        check_weights(options)
    return JobPlan(
        trainer_pb2.JOB_KIND_CLASSIFIER,
        options,
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
    if next(iter(store.list(bucket, as_folder(prefix))), None) is None:
        raise NotFoundError(f"dataset {request.dataset.name!r}: no objects under s3://{bucket}/{as_folder(prefix)}")
    if plan.synthetic is not None:
        bucket, prefix = plan.synthetic
        if not store.exists(bucket, as_folder(prefix) + MANIFEST_NAME):
            raise NotFoundError(f"synthetic: no {MANIFEST_NAME} under s3://{bucket}/{as_folder(prefix)}")
    if isinstance(request, GanRequest) and request.resume:
        key = f"{plan.output_prefix}/{GAN_STATE_KEY}"
        legacy = f"{plan.output_prefix}/{LEGACY_GAN_STATE_KEY}"
        if not store.exists(config.models_bucket, key) and not store.exists(config.models_bucket, legacy):
            raise NotFoundError(f"resume: no GAN run to continue at s3://{config.models_bucket}/{key}")


def pin_weights(store: ObjectStore, request: ClassifierRequest) -> None:
    """Record the weights checkpoint's sha256 (a restart then uses the same bytes): NotFoundError when it is not
    stored, CheckpointError when its sha256 is not the requested one."""
    ref = request.weights_checkpoint
    stored = store.stat(ref.bucket, ref.key)
    if ref.sha256 and ref.sha256 != stored.sha256:
        raise CheckpointError(f"{stored.uri} has sha256 {stored.sha256}, not the requested {ref.sha256}")
    ref.sha256, ref.size = stored.sha256, stored.size
