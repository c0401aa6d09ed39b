"""Generator service settings, read from environment variables (the object store: shared.storage.config).

    PNEUMONIA_GENERATOR_HOST         address both servers listen on         default: 127.0.0.1
    PNEUMONIA_GENERATOR_GRPC_PORT    gRPC port (0: any free port)           default: 50052
    PNEUMONIA_GENERATOR_HTTP_PORT    HTTP port (0: any free port)           default: 8082
    PNEUMONIA_GENERATOR_MAX_IMAGES   most images one request may ask for    default: 10000
    PNEUMONIA_GENERATOR_BATCH_SIZE   images per forward pass when a         default: 64
                                     request leaves batch_size at 0
    PNEUMONIA_GENERATOR_DEVICE       auto | cpu | cuda (auto: CUDA if any)  default: auto
    PNEUMONIA_GENERATOR_WORKERS      gRPC worker threads                    default: 8
    PNEUMONIA_GENERATOR_GRACE        seconds calls in flight may take to    default: 30
                                     finish after SIGTERM
    PNEUMONIA_SYNTHETIC_BUCKET       bucket the images are stored in        default: synthetic
    PNEUMONIA_MODELS_BUCKET          bucket of generator checkpoints when   default: models
                                     a request names none

An empty variable counts as unset. Listening on 0.0.0.0 (in a container) is an explicit choice.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from shared.env import DEVICES, check_choice, env_float, env_int
from shared.errors import ConfigError
from shared.runtime import select_device
from shared.storage.config import check_bucket_names


@dataclass(frozen=True)
class GeneratorConfig:
    """The generator service's settings; see the module docstring for the variables and defaults."""

    host: str = "127.0.0.1"
    grpc_port: int = 50052
    http_port: int = 8082
    max_images: int = 10000
    batch_size: int = 64
    device: str = "auto"
    workers: int = 8
    grace: float = 30.0
    synthetic_bucket: str = "synthetic"
    models_bucket: str = "models"

    def __post_init__(self) -> None:
        check_choice("PNEUMONIA_GENERATOR_DEVICE", self.device, DEVICES)
        check_bucket_names(
            {
                "PNEUMONIA_SYNTHETIC_BUCKET": self.synthetic_bucket,
                "PNEUMONIA_MODELS_BUCKET": self.models_bucket,
            }
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> GeneratorConfig:
        """Read the variables (from `environ`, default os.environ); ConfigError naming a bad one."""
        env = {name: value for name, value in (os.environ if environ is None else environ).items() if value}
        defaults = cls()
        return cls(
            host=env.get("PNEUMONIA_GENERATOR_HOST", defaults.host),
            grpc_port=env_int(env, "PNEUMONIA_GENERATOR_GRPC_PORT", defaults.grpc_port, 0, 65535),
            http_port=env_int(env, "PNEUMONIA_GENERATOR_HTTP_PORT", defaults.http_port, 0, 65535),
            max_images=env_int(env, "PNEUMONIA_GENERATOR_MAX_IMAGES", defaults.max_images, 1),
            batch_size=env_int(env, "PNEUMONIA_GENERATOR_BATCH_SIZE", defaults.batch_size, 1),
            device=env.get("PNEUMONIA_GENERATOR_DEVICE", defaults.device),
            workers=env_int(env, "PNEUMONIA_GENERATOR_WORKERS", defaults.workers, 1),
            grace=env_float(env, "PNEUMONIA_GENERATOR_GRACE", defaults.grace),
            synthetic_bucket=env.get("PNEUMONIA_SYNTHETIC_BUCKET", defaults.synthetic_bucket),
            models_bucket=env.get("PNEUMONIA_MODELS_BUCKET", defaults.models_bucket),
        )

    def torch_device(self) -> torch.device:
        """The device to generate on; ConfigError when 'cuda' is asked for and there is none."""
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("PNEUMONIA_GENERATOR_DEVICE=cuda, but CUDA is not available here")
        return select_device(force_cpu=self.device == "cpu")
