"""Classifier service (TorchServe) settings, read from environment variables.

Every port 0 means "any free port" (picked when TorchServe starts). Token authorization always stays on. An empty
variable counts as unset. Listening on 0.0.0.0 (in a container) is an explicit choice. The variables, generated from
ClassifierConfig:
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import field_validator
from pydantic_settings import NoDecode

from shared.settings import Port, Settings, comma_list, env_prefix, setting, settings_help
from shared.storage.config import StorageConfig

MODEL_STORE_PREFIX = "model-store"
DEFAULT_MAX_REQUEST_SIZE = 6_553_500  # TorchServe's own default
_MODEL_ENTRY = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9_-]{0,63}=)?[A-Za-z0-9][A-Za-z0-9._-]*\.mar$")


class ClassifierConfig(Settings, alias_generator=env_prefix("PNEUMONIA_CLASSIFIER_")):
    """The classifier service's settings, one field per PNEUMONIA_CLASSIFIER_* variable."""

    host: str = setting("127.0.0.1", "address of the inference APIs (REST, gRPC) and the metrics API")
    management_host: str = setting(
        "127.0.0.1",
        "address of the management APIs (REST, gRPC): loopback only, or in a container the internal network's "
        "address; never public",
    )
    inference_port: Port = setting(8080, "REST inference (/predictions, /ping)")
    management_port: Port = setting(8081, "REST management (/models)")
    metrics_port: Port = setting(8083, "Prometheus metrics (/metrics)")
    grpc_port: Port = setting(7070, "gRPC inference")
    grpc_management_port: Port = setting(7071, "gRPC management")
    model_store: Path = setting(
        Path(MODEL_STORE_PREFIX),
        "directory TorchServe loads .mar files from (by file name)",
        shown_default="<storage root>/<models bucket>/model-store with the local store, else ./model-store",
    )
    workdir: Path = setting(
        Path("torchserve"), "TorchServe's working directory: key_file.json (the API keys), logs/, config.properties"
    )
    batch_size: int = setting(
        8,
        "server-side batch size of models registered through ClassifierClient (models loaded at start keep their "
        ".mar's model-config.yaml)",
        ge=1,
    )
    max_batch_delay_ms: int = setting(50, "ms a batch waits to fill (the same)", ge=0)
    max_request_size: int = setting(DEFAULT_MAX_REQUEST_SIZE, "largest request body in bytes (REST, gRPC)", ge=1024)
    workers: int = setting(1, "workers per model", ge=1)
    models: Annotated[tuple[str, ...], NoDecode] = setting(
        (),
        "models loaded at start: comma-separated 'name=file.mar' or 'file.mar' in the store",
        kind="comma-separated list",
        shown_default="none",
    )
    restore: bool = setting(
        True,
        "without PNEUMONIA_CLASSIFIER_MODELS: load at start the models TorchServe's last snapshot in the workdir had "
        "registered, where their archives are still in the model store (a restarted service serves what it served)",
    )
    token_expiration_min: float = setting(
        60.0, "minutes an API key stays valid; the service renews the keys (key_file.json) before that", ge=0.1
    )
    allowed_urls: str = setting(
        r"https?://.*",
        "regex of the URLs archives may be registered from (TorchServe's allowed_urls)",
        kind="regular expression",
        shown_default="http(s) to the S3 endpoint when set, else any http(s)",
    )
    startup_timeout: float = setting(180.0, "seconds to wait for TorchServe to be ready", ge=1)
    grace: float = setting(30.0, "seconds TorchServe gets to stop on SIGTERM", ge=0)
    extra_properties: dict[str, str] = setting(
        description="more config.properties lines (tests)", default_factory=dict, from_env=False
    )

    @field_validator("models", mode="before")
    @classmethod
    def _split_models(cls, value: Any) -> Any:
        return comma_list(value)

    @field_validator("models")
    @classmethod
    def _model_entries(cls, models: tuple[str, ...]) -> tuple[str, ...]:
        for entry in models:
            if not _MODEL_ENTRY.match(entry):
                raise ValueError(
                    f"{entry!r} is not 'file.mar' or 'name=file.mar' "
                    "(a file in the model store; names: letters, digits, '-', '_')"
                )
        return models

    @field_validator("allowed_urls")
    @classmethod
    def _regular_expression(cls, pattern: str) -> str:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        return pattern

    @classmethod
    def from_env(cls, environ: Mapping[str, str | None] | None = None, **overrides: Any) -> Self:
        """Read the variables (from `environ`, default os.environ); the model store and allowed URLs default to
        what the storage settings in the same environment imply. ConfigError naming a bad variable."""
        env = {name: value for name, value in (os.environ if environ is None else environ).items() if value}
        values = {**cls.env_values(env), **overrides}
        if "model_store" not in values:
            values["model_store"] = default_model_store(env)
        if "allowed_urls" not in values:
            values["allowed_urls"] = default_allowed_urls(env)
        return cls(**values)


def batching_from_env(environ: Mapping[str, str]) -> tuple[int, int]:
    """(PNEUMONIA_CLASSIFIER_BATCH_SIZE, PNEUMONIA_CLASSIFIER_MAX_BATCH_DELAY_MS), for clients that register models."""
    values = ClassifierConfig.env_values(environ)
    config = ClassifierConfig(**{name: values[name] for name in ("batch_size", "max_batch_delay_ms") if name in values})
    return config.batch_size, config.max_batch_delay_ms


def default_model_store(env: Mapping[str, str]) -> Path:
    """<storage root>/<models bucket>/model-store with the local store (archives are registered by file name
    straight from storage), else ./model-store (archives come by URL, see services.classifier.client)."""
    if env.get("PNEUMONIA_STORAGE_BACKEND", "local") == "local":
        storage = StorageConfig.from_env(env)
        return storage.root / (env.get("PNEUMONIA_MODELS_BUCKET") or "models") / MODEL_STORE_PREFIX
    return Path(MODEL_STORE_PREFIX)  # S3: TorchServe needs no storage credentials, it downloads presigned URLs


def default_allowed_urls(env: Mapping[str, str]) -> str:
    """Only the configured S3 endpoint when there is one (presigned URLs), else any http(s) URL."""
    endpoint = env.get("PNEUMONIA_S3_ENDPOINT")
    return rf"https?://{re.escape(endpoint)}/.*" if endpoint else r"https?://.*"


__doc__ += settings_help(ClassifierConfig)
