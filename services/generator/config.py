"""Generator service settings, read from environment variables; the object store's are in shared.storage.config,
the accepted callers' tokens in shared.auth.

An empty variable counts as unset. Listening on 0.0.0.0 (in a container) is an explicit choice. The variables,
generated from GeneratorConfig:
"""

from __future__ import annotations

import torch

from shared.auth import AuthConfig
from shared.errors import ConfigError
from shared.runtime import select_device
from shared.settings import Device, Port, Settings, env_prefix, setting, settings_help
from shared.storage.config import BucketName, StorageConfig, bucket_setting


class GeneratorConfig(Settings, alias_generator=env_prefix("PNEUMONIA_GENERATOR_")):
    """The generator service's settings, one field per PNEUMONIA_GENERATOR_* variable (and the buckets)."""

    host: str = setting("127.0.0.1", "address both servers listen on")
    grpc_port: Port = setting(50052, "gRPC port (0: any free port)")
    http_port: Port = setting(8082, "HTTP port (0: any free port)")
    max_images: int = setting(10000, "most images one request may ask for", ge=1)
    batch_size: int = setting(64, "images per forward pass when a request leaves batch_size at 0", ge=1)
    device: Device = setting("auto", "auto: CUDA if any")
    workers: int = setting(8, "gRPC worker threads", ge=1)
    grace: float = setting(30.0, "seconds calls in flight may take to finish after SIGTERM", ge=0)
    synthetic_bucket: BucketName = bucket_setting("synthetic", "bucket the images are stored in")
    models_bucket: BucketName = bucket_setting("models", "bucket of generator checkpoints when a request names none")

    def torch_device(self) -> torch.device:
        """The device to generate on; ConfigError when 'cuda' is asked for and there is none."""
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("PNEUMONIA_GENERATOR_DEVICE=cuda, but CUDA is not available here")
        return select_device(force_cpu=self.device == "cpu")


__doc__ += settings_help(GeneratorConfig, StorageConfig, AuthConfig)
