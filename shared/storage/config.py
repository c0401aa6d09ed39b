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

from shared.errors import ConfigError
from shared.storage.base import ObjectStore
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
            retries=int(_parse_number(env, "PNEUMONIA_STORAGE_RETRIES", default=4, minimum=1, integer=True)),
            retry_delay=_parse_number(env, "PNEUMONIA_STORAGE_RETRY_DELAY", default=0.5, minimum=0),
        )


def _parse_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    value = env.get(name)
    if value is None:
        return default
    if value.lower() not in ("true", "false"):
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    return value.lower() == "true"


def _parse_number(env: Mapping[str, str], name: str, default: float, minimum: float, integer: bool = False) -> float:
    value = env.get(name)
    if value is None:
        return default
    try:
        number = int(value) if integer else float(value)
    except ValueError:
        number = None
    if number is None or not number >= minimum:  # `not >=` also rejects nan
        raise ConfigError(f"{name} must be {'an integer' if integer else 'a number'} >= {minimum}, got {value!r}")
    return number


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
