"""Analyzer service settings, read from environment variables (the object store: shared.storage.config).

    PNEUMONIA_ANALYZER_HOST        address the gRPC server listens on       default: 127.0.0.1
    PNEUMONIA_ANALYZER_GRPC_PORT   gRPC port (0: any free port)             default: 50053
    PNEUMONIA_ANALYZER_WORKERS     gRPC worker threads (one analysis runs   default: 4
                                   at a time; the others wait in theirs)
    PNEUMONIA_ANALYZER_GRACE       seconds an analysis in flight may take   default: 60
                                   to finish after SIGTERM
    PNEUMONIA_ANALYZER_WORK_DIR    where each request's inputs and report   default: the system temp dir
                                   are staged (removed after the request)
    PNEUMONIA_ANALYZER_DEVICE      auto | cpu | cuda (auto: CUDA if any)    default: auto
    PNEUMONIA_RESULTS_BUCKET       reports, and metrics when a request      default: results
                                   names no bucket
    PNEUMONIA_MODELS_BUCKET        classifier and generator checkpoints     default: models
    PNEUMONIA_SYNTHETIC_BUCKET     synthetic images                         default: synthetic
    PNEUMONIA_DATASETS_BUCKET      datasets                                 default: datasets

A request's empty bucket field means the bucket above. An empty variable counts as unset. Listening on 0.0.0.0
(in a container) is an explicit choice.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from shared.env import DEVICES, check_choice, env_float, env_int
from shared.errors import ConfigError
from shared.storage.config import check_bucket_names


@dataclass(frozen=True)
class AnalyzerConfig:
    """The analyzer service's settings; see the module docstring for the variables and defaults."""

    host: str = "127.0.0.1"
    grpc_port: int = 50053
    workers: int = 4
    grace: float = 60.0
    work_dir: Path | None = None  # None: the system temp dir
    device: str = "auto"
    results_bucket: str = "results"
    models_bucket: str = "models"
    synthetic_bucket: str = "synthetic"
    datasets_bucket: str = "datasets"

    def __post_init__(self) -> None:
        check_choice("PNEUMONIA_ANALYZER_DEVICE", self.device, DEVICES)
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("PNEUMONIA_ANALYZER_DEVICE=cuda, but CUDA is not available here")
        check_bucket_names(
            {
                "PNEUMONIA_RESULTS_BUCKET": self.results_bucket,
                "PNEUMONIA_MODELS_BUCKET": self.models_bucket,
                "PNEUMONIA_SYNTHETIC_BUCKET": self.synthetic_bucket,
                "PNEUMONIA_DATASETS_BUCKET": self.datasets_bucket,
            }
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AnalyzerConfig:
        """Read the variables (from `environ`, default os.environ); ConfigError naming a bad one."""
        env = {name: value for name, value in (os.environ if environ is None else environ).items() if value}
        defaults = cls()
        work_dir = env.get("PNEUMONIA_ANALYZER_WORK_DIR")
        return cls(
            host=env.get("PNEUMONIA_ANALYZER_HOST", defaults.host),
            grpc_port=env_int(env, "PNEUMONIA_ANALYZER_GRPC_PORT", defaults.grpc_port, 0, 65535),
            workers=env_int(env, "PNEUMONIA_ANALYZER_WORKERS", defaults.workers, 1),
            grace=env_float(env, "PNEUMONIA_ANALYZER_GRACE", defaults.grace),
            work_dir=Path(work_dir) if work_dir else None,
            device=env.get("PNEUMONIA_ANALYZER_DEVICE", defaults.device),
            results_bucket=env.get("PNEUMONIA_RESULTS_BUCKET", defaults.results_bucket),
            models_bucket=env.get("PNEUMONIA_MODELS_BUCKET", defaults.models_bucket),
            synthetic_bucket=env.get("PNEUMONIA_SYNTHETIC_BUCKET", defaults.synthetic_bucket),
            datasets_bucket=env.get("PNEUMONIA_DATASETS_BUCKET", defaults.datasets_bucket),
        )

    @property
    def force_cpu(self) -> bool:
        """Whether every analysis runs on the CPU (analyze-results' --cpu)."""
        return self.device == "cpu"
