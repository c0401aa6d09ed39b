"""Trainer service settings, read from environment variables; the object store's are in shared.storage.config,
the accepted callers' tokens in shared.auth.

An empty variable counts as unset. Listening on 0.0.0.0 (in a container) is an explicit choice. The variables,
generated from TrainerConfig:
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from shared.auth import AuthConfig
from shared.errors import ConfigError
from shared.settings import Device, Port, Settings, env_prefix, setting, settings_help
from shared.storage.config import BucketName, StorageConfig, bucket_setting


def default_work_dir() -> Path:
    return Path(tempfile.gettempdir()) / "pneumonia-trainer"


class TrainerConfig(Settings, alias_generator=env_prefix("PNEUMONIA_TRAINER_")):
    """The trainer service's settings, one field per PNEUMONIA_TRAINER_* variable (and the buckets)."""

    host: str = setting("127.0.0.1", "address the gRPC server listens on")
    grpc_port: Port = setting(50051, "gRPC port (0: any free port)")
    workers: int = setting(8, "gRPC worker threads (each WatchJob stream holds one while it lasts)", ge=1)
    grace: float = setting(
        30.0, "seconds after SIGTERM for calls in flight and for the running job to reach its next checkpoint", ge=0
    )
    work_dir: Path = setting(
        description="local scratch: dataset cache and the running job's files",
        default_factory=default_work_dir,
        shown_default="<tmp>/pneumonia-trainer",
    )
    device: Device = setting("auto", "auto: CUDA if any, unless the request asks for the CPU")
    loader_workers: int = setting(0, "DataLoader worker processes per job (0: load in the service's process)", ge=0)
    max_queued_jobs: int = setting(
        100, "jobs waiting to run at most; StartGanJob / StartClassifierJob beyond it: RESOURCE_EXHAUSTED", ge=1
    )
    max_crashes: int = setting(
        3, "a job the service was running when it died this many times fails instead of running again", ge=1
    )
    datasets_bucket: BucketName = bucket_setting("datasets", "bucket of datasets a request names none")
    synthetic_bucket: BucketName = bucket_setting("synthetic", "bucket of synthetic images a request names none")
    models_bucket: BucketName = bucket_setting("models", "checkpoints, model-store/*.mar and the job records")
    results_bucket: BucketName = bucket_setting("results", "metrics, figures and sample grids")

    @property
    def force_cpu(self) -> bool:
        """Every job trains on the CPU (PNEUMONIA_TRAINER_DEVICE=cpu)."""
        return self.device == "cpu"

    def check_device(self) -> None:
        """ConfigError when 'cuda' is asked for and there is none (checked when the service starts)."""
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("PNEUMONIA_TRAINER_DEVICE=cuda, but CUDA is not available here")


__doc__ += settings_help(TrainerConfig, StorageConfig, AuthConfig)
