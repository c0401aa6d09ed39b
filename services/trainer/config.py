"""Trainer service settings, read from environment variables (the object store: shared.storage.config).

    PNEUMONIA_TRAINER_HOST            address the gRPC server listens on        default: 127.0.0.1
    PNEUMONIA_TRAINER_GRPC_PORT       gRPC port (0: any free port)              default: 50051
    PNEUMONIA_TRAINER_WORKERS         gRPC worker threads (each WatchJob        default: 8
                                      stream holds one while it lasts)
    PNEUMONIA_TRAINER_GRACE           seconds after SIGTERM for calls in flight default: 30
                                      and for the running job to reach its
                                      next checkpoint
    PNEUMONIA_TRAINER_WORK_DIR        local scratch: dataset cache and the      default: <tmp>/pneumonia-trainer
                                      running job's files
    PNEUMONIA_TRAINER_DEVICE          auto | cpu | cuda (auto: CUDA if any,     default: auto
                                      unless the request asks for the CPU)
    PNEUMONIA_TRAINER_LOADER_WORKERS  DataLoader worker processes per job       default: 0
                                      (0: load in the service's process)
    PNEUMONIA_DATASETS_BUCKET         bucket of datasets a request names none   default: datasets
    PNEUMONIA_SYNTHETIC_BUCKET        bucket of synthetic images (same rule)    default: synthetic
    PNEUMONIA_MODELS_BUCKET           checkpoints, model-store/*.mar and the    default: models
                                      job records (trainer-jobs/)
    PNEUMONIA_RESULTS_BUCKET          metrics, figures and sample grids         default: results

An empty variable counts as unset. Listening on 0.0.0.0 (in a container) is an explicit choice.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from shared.env import DEVICES, check_choice, env_float, env_int
from shared.errors import ConfigError
from shared.storage.config import check_bucket_names


def default_work_dir() -> Path:
    return Path(tempfile.gettempdir()) / "pneumonia-trainer"


@dataclass(frozen=True)
class TrainerConfig:
    """The trainer service's settings; see the module docstring for the variables and defaults."""

    host: str = "127.0.0.1"
    grpc_port: int = 50051
    workers: int = 8
    grace: float = 30.0
    work_dir: Path = field(default_factory=default_work_dir)
    device: str = "auto"
    loader_workers: int = 0
    datasets_bucket: str = "datasets"
    synthetic_bucket: str = "synthetic"
    models_bucket: str = "models"
    results_bucket: str = "results"

    def __post_init__(self) -> None:
        check_choice("PNEUMONIA_TRAINER_DEVICE", self.device, DEVICES)
        check_bucket_names(
            {
                "PNEUMONIA_DATASETS_BUCKET": self.datasets_bucket,
                "PNEUMONIA_SYNTHETIC_BUCKET": self.synthetic_bucket,
                "PNEUMONIA_MODELS_BUCKET": self.models_bucket,
                "PNEUMONIA_RESULTS_BUCKET": self.results_bucket,
            }
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TrainerConfig:
        """Read the variables (from `environ`, default os.environ); ConfigError naming a bad one."""
        env = {name: value for name, value in (os.environ if environ is None else environ).items() if value}
        defaults = cls()
        return cls(
            host=env.get("PNEUMONIA_TRAINER_HOST", defaults.host),
            grpc_port=env_int(env, "PNEUMONIA_TRAINER_GRPC_PORT", defaults.grpc_port, 0, 65535),
            workers=env_int(env, "PNEUMONIA_TRAINER_WORKERS", defaults.workers, 1),
            grace=env_float(env, "PNEUMONIA_TRAINER_GRACE", defaults.grace),
            work_dir=Path(env.get("PNEUMONIA_TRAINER_WORK_DIR", defaults.work_dir)),
            device=env.get("PNEUMONIA_TRAINER_DEVICE", defaults.device),
            loader_workers=env_int(env, "PNEUMONIA_TRAINER_LOADER_WORKERS", defaults.loader_workers, 0),
            datasets_bucket=env.get("PNEUMONIA_DATASETS_BUCKET", defaults.datasets_bucket),
            synthetic_bucket=env.get("PNEUMONIA_SYNTHETIC_BUCKET", defaults.synthetic_bucket),
            models_bucket=env.get("PNEUMONIA_MODELS_BUCKET", defaults.models_bucket),
            results_bucket=env.get("PNEUMONIA_RESULTS_BUCKET", defaults.results_bucket),
        )

    @property
    def force_cpu(self) -> bool:
        """Every job trains on the CPU (PNEUMONIA_TRAINER_DEVICE=cpu)."""
        return self.device == "cpu"

    def check_device(self) -> None:
        """ConfigError when 'cuda' is asked for and there is none (checked when the service starts)."""
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("PNEUMONIA_TRAINER_DEVICE=cuda, but CUDA is not available here")
