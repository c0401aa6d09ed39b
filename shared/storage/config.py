"""Object storage configuration, read from environment variables (no credentials in code or logs).

    PNEUMONIA_STORAGE_BACKEND      local | s3                                   default: local
    PNEUMONIA_STORAGE_ROOT         LocalStore directory                         default: ./storage
    PNEUMONIA_S3_ENDPOINT          S3/MinIO server as host:port, no scheme      required for s3
                                   (e.g. minio:9000)
    PNEUMONIA_S3_ACCESS_KEY        S3 access key                                required for s3
    PNEUMONIA_S3_SECRET_KEY        S3 secret key (never logged or printed)      required for s3
    PNEUMONIA_S3_SECURE            true | false: use HTTPS                      default: true
    PNEUMONIA_S3_REGION            S3 region                                    default: asked of the server
    PNEUMONIA_STORAGE_RETRIES      attempts per S3 operation before giving up   default: 4
    PNEUMONIA_STORAGE_RETRY_DELAY  seconds before the first retry, then doubled default: 0.5

An empty variable counts as unset.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from shared.env import env_float, env_int
from shared.errors import ConfigError
from shared.storage.base import InvalidKeyError, ObjectStore, validate_bucket
from shared.storage.local import LocalStore
from shared.storage.s3 import S3Store

BACKENDS = ("local", "s3")


@dataclass(frozen=True)
class StorageConfig:
    """Where objects live. The keys are left out of repr so that logging a config never leaks them."""

    backend: str = "local"
    root: Path = Path("storage")
    endpoint: str | None = None
    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    secure: bool = True
    region: str | None = None
    retries: int = 4
    retry_delay: float = 0.5

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"PNEUMONIA_STORAGE_BACKEND must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.backend == "s3":
            for name, value in [
                ("PNEUMONIA_S3_ENDPOINT", self.endpoint),
                ("PNEUMONIA_S3_ACCESS_KEY", self.access_key),
                ("PNEUMONIA_S3_SECRET_KEY", self.secret_key),
            ]:
                if not value:
                    raise ConfigError(f"{name} must be set when PNEUMONIA_STORAGE_BACKEND=s3")
            if "://" in self.endpoint or "/" in self.endpoint:
                raise ConfigError(
                    f"PNEUMONIA_S3_ENDPOINT must be host:port without scheme or path, got {self.endpoint!r} "
                    "(set PNEUMONIA_S3_SECURE=false for plain http)"
                )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> StorageConfig:
        """Read the PNEUMONIA_* variables (from `environ`, default os.environ); ConfigError naming a bad one."""
        env = {name: value for name, value in (os.environ if environ is None else environ).items() if value}
        return cls(
            backend=env.get("PNEUMONIA_STORAGE_BACKEND", "local"),
            root=Path(env.get("PNEUMONIA_STORAGE_ROOT", "storage")),
            endpoint=env.get("PNEUMONIA_S3_ENDPOINT"),
            access_key=env.get("PNEUMONIA_S3_ACCESS_KEY"),
            secret_key=env.get("PNEUMONIA_S3_SECRET_KEY"),
            secure=_parse_bool(env, "PNEUMONIA_S3_SECURE", default=True),
            region=env.get("PNEUMONIA_S3_REGION"),
            retries=env_int(env, "PNEUMONIA_STORAGE_RETRIES", 4, minimum=1),
            retry_delay=env_float(env, "PNEUMONIA_STORAGE_RETRY_DELAY", 0.5, minimum=0.0),
        )


def _parse_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    value = env.get(name)
    if value is None:
        return default
    if value.lower() not in ("true", "false"):
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    return value.lower() == "true"


def check_bucket_names(names: Mapping[str, str]) -> None:
    """{variable: bucket name} -> ConfigError naming the variable of the first name S3 would refuse."""
    for variable, bucket in names.items():
        try:
            validate_bucket(bucket)
        except InvalidKeyError as exc:
            raise ConfigError(f"{variable}: {exc}") from exc


@dataclass(frozen=True)
class BucketNames:
    """The four buckets every service shares (PNEUMONIA_DATASETS_BUCKET, _SYNTHETIC_, _MODELS_, _RESULTS_)."""

    datasets: str = "datasets"
    synthetic: str = "synthetic"
    models: str = "models"
    results: str = "results"

    def __post_init__(self) -> None:
        check_bucket_names({f"PNEUMONIA_{name.upper()}_BUCKET": value for name, value in vars(self).items()})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> BucketNames:
        """Read the variables (from `environ`, default os.environ); ConfigError naming a bad one."""
        env = {name: value for name, value in (os.environ if environ is None else environ).items() if value}
        return cls(**{name: env.get(f"PNEUMONIA_{name.upper()}_BUCKET", value) for name, value in vars(cls()).items()})


def open_store(config: StorageConfig | None = None) -> ObjectStore:
    """The ObjectStore that `config` (default: StorageConfig.from_env()) describes."""
    config = StorageConfig.from_env() if config is None else config
    if config.backend == "local":
        return LocalStore(config.root)
    return S3Store(
        config.endpoint,
        config.access_key,
        config.secret_key,
        secure=config.secure,
        region=config.region,
        retries=config.retries,
        retry_delay=config.retry_delay,
    )
