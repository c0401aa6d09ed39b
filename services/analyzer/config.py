"""Analyzer service settings, read from environment variables; the object store's are in shared.storage.config,
the accepted callers' tokens in shared.auth.

A request's empty bucket field means the bucket below. An empty variable counts as unset. Listening on 0.0.0.0
(in a container) is an explicit choice. The variables, generated from AnalyzerConfig:
"""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import model_validator

from shared.auth import AuthConfig
from shared.settings import Device, Port, Settings, env_prefix, setting, settings_help
from shared.storage.config import BucketName, StorageConfig, bucket_setting


class AnalyzerConfig(Settings, alias_generator=env_prefix("PNEUMONIA_ANALYZER_")):
    """The analyzer service's settings, one field per PNEUMONIA_ANALYZER_* variable (and the buckets)."""

    host: str = setting("127.0.0.1", "address the gRPC server listens on")
    grpc_port: Port = setting(50053, "gRPC port (0: any free port)")
    workers: int = setting(4, "gRPC worker threads (one analysis runs at a time; the others wait in theirs)", ge=1)
    grace: float = setting(60.0, "seconds an analysis in flight may take to finish after SIGTERM", ge=0)
    work_dir: Path | None = setting(
        None,
        "where each request's inputs and report are staged (removed after the request)",
        shown_default="the system temp dir",
    )
    device: Device = setting("auto", "auto: CUDA if any")
    results_bucket: BucketName = bucket_setting("results", "reports, and metrics when a request names no bucket")
    models_bucket: BucketName = bucket_setting("models", "classifier and generator checkpoints")
    synthetic_bucket: BucketName = bucket_setting("synthetic", "synthetic images")
    datasets_bucket: BucketName = bucket_setting("datasets", "datasets")

    @model_validator(mode="after")
    def _cuda_is_there(self) -> AnalyzerConfig:
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("PNEUMONIA_ANALYZER_DEVICE=cuda, but CUDA is not available here")
        return self

    @property
    def force_cpu(self) -> bool:
        """Whether every analysis runs on the CPU (analyze-results' --cpu)."""
        return self.device == "cpu"


__doc__ += settings_help(AnalyzerConfig, StorageConfig, AuthConfig)
