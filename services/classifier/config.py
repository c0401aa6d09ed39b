"""Classifier service (TorchServe) settings, read from environment variables.

    PNEUMONIA_CLASSIFIER_HOST                 address of the inference APIs (REST, gRPC)   default: 127.0.0.1
                                              and the metrics API
    PNEUMONIA_CLASSIFIER_MANAGEMENT_HOST      address of the management APIs (REST,        default: 127.0.0.1
                                              gRPC): loopback only, or in a container the
                                              internal network's address; never public
    PNEUMONIA_CLASSIFIER_INFERENCE_PORT       REST inference (/predictions, /ping)         default: 8080
    PNEUMONIA_CLASSIFIER_MANAGEMENT_PORT      REST management (/models)                    default: 8081
    PNEUMONIA_CLASSIFIER_METRICS_PORT         Prometheus metrics (/metrics)                default: 8083
    PNEUMONIA_CLASSIFIER_GRPC_PORT            gRPC inference                               default: 7070
    PNEUMONIA_CLASSIFIER_GRPC_MANAGEMENT_PORT gRPC management                              default: 7071
    PNEUMONIA_CLASSIFIER_MODEL_STORE          directory TorchServe loads .mar files from   default: <storage root>/
                                              (by file name)                               <models bucket>/model-store
                                                                                           with the local store,
                                                                                           else ./model-store
    PNEUMONIA_CLASSIFIER_WORKDIR              TorchServe's working directory: key_file.json default: ./torchserve
                                              (the API keys), logs/, config.properties
    PNEUMONIA_CLASSIFIER_BATCH_SIZE           server-side batch size of models registered  default: 8
                                              through ClassifierClient (models loaded at
                                              start keep their .mar's model-config.yaml)
    PNEUMONIA_CLASSIFIER_MAX_BATCH_DELAY_MS   ms a batch waits to fill (the same)          default: 50
    PNEUMONIA_CLASSIFIER_MAX_REQUEST_SIZE     largest request body in bytes (REST, gRPC)   default: 6553500
    PNEUMONIA_CLASSIFIER_WORKERS              workers per model                            default: 1
    PNEUMONIA_CLASSIFIER_MODELS               models loaded at start: comma-separated      default: none
                                              'name=file.mar' or 'file.mar' in the store
    PNEUMONIA_CLASSIFIER_TOKEN_EXPIRATION_MIN minutes an API key stays valid; the service  default: 60
                                              renews the keys (key_file.json) before that
    PNEUMONIA_CLASSIFIER_ALLOWED_URLS         regex of the URLs archives may be registered default: http(s) to
                                              from (TorchServe's allowed_urls)             PNEUMONIA_S3_ENDPOINT
                                                                                           when set, else http(s)
    PNEUMONIA_CLASSIFIER_STARTUP_TIMEOUT      seconds to wait for TorchServe to be ready   default: 180
    PNEUMONIA_CLASSIFIER_GRACE                seconds TorchServe gets to stop on SIGTERM   default: 30

Every port 0 means "any free port" (picked when TorchServe starts). Token authorization always stays on.
An empty variable counts as unset. Listening on 0.0.0.0 (in a container) is an explicit choice.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from shared.env import env_float, env_int
from shared.errors import ConfigError
from shared.storage.config import StorageConfig

MODEL_STORE_PREFIX = "model-store"
DEFAULT_MAX_REQUEST_SIZE = 6_553_500  # TorchServe's own default
_MODEL_ENTRY = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9_-]{0,63}=)?[A-Za-z0-9][A-Za-z0-9._-]*\.mar$")


@dataclass(frozen=True)
class ClassifierConfig:
    """The classifier service's settings; see the module docstring for the variables and defaults."""

    host: str = "127.0.0.1"
    management_host: str = "127.0.0.1"
    inference_port: int = 8080
    management_port: int = 8081
    metrics_port: int = 8083
    grpc_port: int = 7070
    grpc_management_port: int = 7071
    model_store: Path = Path("model-store")
    workdir: Path = Path("torchserve")
    batch_size: int = 8
    max_batch_delay_ms: int = 50
    max_request_size: int = DEFAULT_MAX_REQUEST_SIZE
    workers: int = 1
    models: tuple[str, ...] = ()
    token_expiration_min: float = 60.0
    allowed_urls: str = r"https?://.*"
    startup_timeout: float = 180.0
    grace: float = 30.0
    extra_properties: Mapping[str, str] = field(default_factory=dict)  # more config.properties lines (tests)

    def __post_init__(self) -> None:
        for entry in self.models:
            if not _MODEL_ENTRY.match(entry):
                raise ConfigError(
                    f"PNEUMONIA_CLASSIFIER_MODELS: {entry!r} is not 'file.mar' or 'name=file.mar' "
                    "(a file in the model store; names: letters, digits, '-', '_')"
                )
        if self.token_expiration_min <= 0:
            raise ConfigError("PNEUMONIA_CLASSIFIER_TOKEN_EXPIRATION_MIN must be > 0")
        try:
            re.compile(self.allowed_urls)
        except re.error as exc:
            raise ConfigError(f"PNEUMONIA_CLASSIFIER_ALLOWED_URLS is not a regular expression: {exc}") from exc

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ClassifierConfig:
        """Read the variables (from `environ`, default os.environ); ConfigError naming a bad one."""
        env = {name: value for name, value in (os.environ if environ is None else environ).items() if value}
        defaults = cls()
        return cls(
            host=env.get("PNEUMONIA_CLASSIFIER_HOST", defaults.host),
            management_host=env.get("PNEUMONIA_CLASSIFIER_MANAGEMENT_HOST", defaults.management_host),
            inference_port=env_int(env, "PNEUMONIA_CLASSIFIER_INFERENCE_PORT", defaults.inference_port, 0, 65535),
            management_port=env_int(env, "PNEUMONIA_CLASSIFIER_MANAGEMENT_PORT", defaults.management_port, 0, 65535),
            metrics_port=env_int(env, "PNEUMONIA_CLASSIFIER_METRICS_PORT", defaults.metrics_port, 0, 65535),
            grpc_port=env_int(env, "PNEUMONIA_CLASSIFIER_GRPC_PORT", defaults.grpc_port, 0, 65535),
            grpc_management_port=env_int(
                env, "PNEUMONIA_CLASSIFIER_GRPC_MANAGEMENT_PORT", defaults.grpc_management_port, 0, 65535
            ),
            model_store=Path(env.get("PNEUMONIA_CLASSIFIER_MODEL_STORE") or default_model_store(env)),
            workdir=Path(env.get("PNEUMONIA_CLASSIFIER_WORKDIR", defaults.workdir)),
            batch_size=batching_from_env(env)[0],
            max_batch_delay_ms=batching_from_env(env)[1],
            max_request_size=env_int(env, "PNEUMONIA_CLASSIFIER_MAX_REQUEST_SIZE", defaults.max_request_size, 1024),
            workers=env_int(env, "PNEUMONIA_CLASSIFIER_WORKERS", defaults.workers, 1),
            models=tuple(m.strip() for m in env.get("PNEUMONIA_CLASSIFIER_MODELS", "").split(",") if m.strip()),
            token_expiration_min=env_float(
                env, "PNEUMONIA_CLASSIFIER_TOKEN_EXPIRATION_MIN", defaults.token_expiration_min, 0.1
            ),
            allowed_urls=env.get("PNEUMONIA_CLASSIFIER_ALLOWED_URLS") or default_allowed_urls(env),
            startup_timeout=env_float(env, "PNEUMONIA_CLASSIFIER_STARTUP_TIMEOUT", defaults.startup_timeout, 1),
            grace=env_float(env, "PNEUMONIA_CLASSIFIER_GRACE", defaults.grace, 0),
        )


def batching_from_env(environ: Mapping[str, str]) -> tuple[int, int]:
    """(PNEUMONIA_CLASSIFIER_BATCH_SIZE, PNEUMONIA_CLASSIFIER_MAX_BATCH_DELAY_MS), for clients that register models."""
    env = {name: value for name, value in environ.items() if value}
    defaults = ClassifierConfig()
    return (
        env_int(env, "PNEUMONIA_CLASSIFIER_BATCH_SIZE", defaults.batch_size, 1),
        env_int(env, "PNEUMONIA_CLASSIFIER_MAX_BATCH_DELAY_MS", defaults.max_batch_delay_ms, 0),
    )


def default_model_store(env: Mapping[str, str]) -> Path:
    """<storage root>/<models bucket>/model-store with the local store (archives are registered by file name
    straight from storage), else ./model-store (archives come by URL, see services.classifier.client)."""
    storage = StorageConfig.from_env(env)
    if storage.backend == "local":
        return storage.root / env.get("PNEUMONIA_MODELS_BUCKET", "models") / MODEL_STORE_PREFIX
    return Path(MODEL_STORE_PREFIX)


def default_allowed_urls(env: Mapping[str, str]) -> str:
    """Only the configured S3 endpoint when there is one (presigned URLs), else any http(s) URL."""
    endpoint = env.get("PNEUMONIA_S3_ENDPOINT")
    return rf"https?://{re.escape(endpoint)}/.*" if endpoint else r"https?://.*"
