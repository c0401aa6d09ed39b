"""Object storage settings, read from environment variables (no credentials in code or logs): StorageConfig (where
objects live) and BucketNames (the four buckets every service shares). The variables, generated from the models:
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, SecretStr, model_validator

from shared.settings import Settings, setting, settings_help
from shared.storage.base import InvalidKeyError, ObjectStore, validate_bucket
from shared.storage.local import LocalStore
from shared.storage.s3 import S3Store


def _valid_bucket(name: str) -> str:
    try:
        return validate_bucket(name)
    except InvalidKeyError as exc:
        raise ValueError(str(exc)) from None


BucketName = Annotated[str, AfterValidator(_valid_bucket)]  # a name S3 accepts


def bucket_setting(bucket: str, description: str) -> Any:
    """A field for the shared variable PNEUMONIA_<BUCKET>_BUCKET, default: the bucket named `bucket`."""
    return setting(bucket, description, env=f"PNEUMONIA_{bucket.upper()}_BUCKET", kind="bucket name")


class StorageConfig(Settings):
    """Where objects live. The keys are SecretStr: a repr, a log or an error never shows them."""

    backend: Literal["local", "s3"] = setting("local", "where objects live", env="PNEUMONIA_STORAGE_BACKEND")
    root: Path = setting(Path("storage"), "directory of the local store", env="PNEUMONIA_STORAGE_ROOT")
    endpoint: str | None = setting(
        None,
        "S3/MinIO server as host:port, no scheme (e.g. minio:9000)",
        env="PNEUMONIA_S3_ENDPOINT",
        shown_default="required for s3",
    )
    access_key: SecretStr | None = setting(
        None, "S3 access key", env="PNEUMONIA_S3_ACCESS_KEY", shown_default="required for s3"
    )
    secret_key: SecretStr | None = setting(
        None, "S3 secret key (never logged or printed)", env="PNEUMONIA_S3_SECRET_KEY", shown_default="required for s3"
    )
    secure: bool = setting(True, "use HTTPS", env="PNEUMONIA_S3_SECURE")
    region: str | None = setting(None, "S3 region", env="PNEUMONIA_S3_REGION", shown_default="asked of the server")
    retries: int = setting(4, "attempts per S3 operation before giving up", env="PNEUMONIA_STORAGE_RETRIES", ge=1)
    retry_delay: float = setting(
        0.5, "seconds before the first retry, then doubled", env="PNEUMONIA_STORAGE_RETRY_DELAY", ge=0
    )

    @model_validator(mode="before")
    @classmethod
    def _true_or_false(cls, values: Any) -> Any:
        """PNEUMONIA_S3_SECURE is exactly true or false (any case), not pydantic's yes/on/1."""
        for key in ("secure", "PNEUMONIA_S3_SECURE"):
            value = values.get(key) if isinstance(values, dict) else None
            if isinstance(value, str):
                if value.lower() not in ("true", "false"):
                    raise ValueError(f"PNEUMONIA_S3_SECURE must be true or false, got {value!r}")
                values = {**values, key: value.lower() == "true"}
        return values

    @model_validator(mode="after")
    def _s3_needs_endpoint_and_keys(self) -> StorageConfig:
        if self.backend == "s3":
            for name in ("endpoint", "access_key", "secret_key"):
                if not getattr(self, name):
                    raise ValueError(f"{self.variable(name)} must be set when PNEUMONIA_STORAGE_BACKEND=s3")
            if "://" in self.endpoint or "/" in self.endpoint:
                raise ValueError(
                    f"PNEUMONIA_S3_ENDPOINT must be host:port without scheme or path, got {self.endpoint!r} "
                    "(set PNEUMONIA_S3_SECURE=false for plain http)"
                )
        return self


class BucketNames(Settings):
    """The four buckets every service shares."""

    datasets: BucketName = bucket_setting("datasets", "bucket of the datasets")
    synthetic: BucketName = bucket_setting("synthetic", "bucket of the synthetic images")
    models: BucketName = bucket_setting("models", "checkpoints, model-store/*.mar and the trainer's job records")
    results: BucketName = bucket_setting("results", "metrics, figures and reports")


def open_store(config: StorageConfig | None = None) -> ObjectStore:
    """The ObjectStore that `config` (default: StorageConfig.from_env()) describes."""
    config = StorageConfig.from_env() if config is None else config
    if config.backend == "local":
        return LocalStore(config.root)
    return S3Store(
        config.endpoint,
        config.access_key.get_secret_value(),
        config.secret_key.get_secret_value(),
        secure=config.secure,
        region=config.region,
        retries=config.retries,
        retry_delay=config.retry_delay,
    )


__doc__ += settings_help(StorageConfig, BucketNames)
