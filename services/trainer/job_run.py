"""Running one job: fetch its inputs, restore its state when resuming, train, store the outputs and the archive."""

from __future__ import annotations

import re
import shutil
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from pneumonia_proto.v1 import trainer_pb2

from services.trainer import train_classifier, train_gan
from services.trainer.config import TrainerConfig
from services.trainer.hooks import stop_if_asked
from services.trainer.plan import (
    GAN_STATE_KEY,
    LEGACY_GAN_STATE_KEY,
    MODEL_STORE_PREFIX,
    GanRequest,
    plan_job,
)
from services.trainer.records import JobEntry
from services.trainer.sync import OutputSync, fetch_prefix
from shared import layout
from shared.configs import ClassifierTrainingConfig, GanTrainingConfig
from shared.errors import ConfigError
from shared.serving.archive import build_model_archive
from shared.storage import NotFoundError, ObjectRef, ObjectStore
from shared.storage.proto import ref_from_proto


class JobHost(Protocol):
    """What a JobRun needs of whoever runs it (the JobManager)."""

    config: TrainerConfig
    store: ObjectStore

    def update(self, entry: JobEntry, **fields: Any) -> None:
        """Change the job's record (see JobManager.update) and wake its watchers."""

    def should_stop(self, entry: JobEntry) -> bool:
        """Whether the job was cancelled or the service is stopping."""


GAN_METRICS = ("loss_d", "loss_g", "d_real", "d_fake")
CLASSIFIER_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "val_auroc", "synthetic_ratio", "lr")


class JobRun:
    """One attempt at running a job: fetch inputs, restore its state when resuming, train, store the outputs."""

    def __init__(self, manager: JobHost, entry: JobEntry) -> None:
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
        plan = self.plan
        resume = self.entry.resumable or (isinstance(self.request, GanRequest) and self.request.resume)
        if not resume:
            shutil.rmtree(plan.dirs.root, ignore_errors=True)  # leftovers of an attempt that stored nothing
        self.manager.update(self.entry, message="fetching the inputs")
        self.fetch_inputs()
        if resume:
            self.restore_state()
        options = plan.options.model_copy(update={"resume": resume})
        self.manager.update(self.entry, message="resuming from its last checkpoint" if resume else "training")
        should_stop = partial(self.manager.should_stop, self.entry)
        if isinstance(options, GanTrainingConfig):
            train_gan.train(options, progress=self.on_epoch, should_stop=should_stop)
        else:
            train_classifier.train_strategy(options, progress=self.on_epoch, should_stop=should_stop)
        self.manager.update(self.entry, message="storing the outputs")
        self.sync.sync()
        archive = self.store_model_archive() if plan.archive_name else None
        return self.sync.outputs(), archive

    def check(self) -> None:
        stop_if_asked(partial(self.manager.should_stop, self.entry), "while fetching the inputs")

    def fetch_inputs(self) -> None:
        plan = self.plan
        fetch_prefix(self.store, *plan.dataset, Path(plan.options.data_dir), self.check)
        if plan.synthetic is not None:
            assert isinstance(plan.options, ClassifierTrainingConfig)
            fetch_prefix(self.store, *plan.synthetic, Path(plan.options.synthetic_dir), self.check)
        if plan.weights is not None:
            assert isinstance(plan.options, ClassifierTrainingConfig)
            path = Path(plan.options.weights)
            got = self.store.get_file(plan.weights.bucket, plan.weights.key, path)
            if plan.weights.sha256 and got.sha256 != plan.weights.sha256:
                path.unlink(missing_ok=True)
                raise ConfigError(f"{got.uri} was replaced after the job was accepted (sha256 {got.sha256})")

    def restore_state(self) -> None:
        """Download the resumable state stored under P/ into the local model folder."""
        bucket, prefix, models = self.config.models_bucket, f"{self.plan.output_prefix}/", self.plan.dirs.models
        if self.plan.kind == trainer_pb2.JOB_KIND_GAN:
            local = layout.gan_dir(models) / layout.GAN_CHECKPOINT
            try:
                self.store.get_file(bucket, prefix + GAN_STATE_KEY, local)
            except NotFoundError:  # a job stored before the gan/gan/ fix
                self.store.get_file(bucket, prefix + LEGACY_GAN_STATE_KEY, local)
            return
        options = self.plan.options
        assert isinstance(options, ClassifierTrainingConfig)
        if options.repeat:  # a repeat's files lie in repeat-<r>/, locally and under P/
            sub = layout.repeat_dir_name(options.repeat)
            prefix, models = f"{prefix}{sub}/", models / sub
        strategy = options.strategy
        names = re.compile(rf"(fold_\d+_)?{re.escape(strategy)}_{re.escape(options.arch)}(_training_state)?\.pth")
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
        options, name = self.plan.options, self.plan.archive_name
        assert isinstance(options, ClassifierTrainingConfig)
        self.manager.update(self.entry, message=f"building the model archive {name}.mar")
        model_dir = options.for_repeat().model_dir
        checkpoint = Path(model_dir) / layout.strategy_model_name(options.strategy, options.arch)
        path = build_model_archive(checkpoint, self.plan.dirs.archive, name)
        self.store.ensure_bucket(self.config.models_bucket)
        return self.store.put_file(self.config.models_bucket, f"{MODEL_STORE_PREFIX}{name}.mar", path)
