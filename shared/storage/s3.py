"""S3Store: objects in MinIO or any S3-compatible service, through the minio SDK.

Each object carries its sha256 as user metadata (header x-amz-meta-sha256), verified on every get. A single
PUT is atomic by protocol, and a multipart upload (large files) becomes visible only when it completes, so
no reader sees half an object. Transient failures (connection refused or reset, timeouts, HTTP 5xx,
SlowDown) are retried with exponential backoff; when every attempt fails, StorageUnavailableError names the
endpoint. Credentials are never logged.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import urllib3
from minio import Minio
from minio.error import InvalidResponseError, MinioException, S3Error, ServerError

from shared.errors import ConfigError
from shared.images import sha256_file
from shared.storage.base import (
    CHUNK_SIZE,
    NotFoundError,
    ObjectRef,
    ObjectStore,
    StorageError,
    StorageUnavailableError,
    file_to_upload,
    object_uri,
    require_sha256,
    validate_bucket,
    validate_key,
    validate_prefix,
    verify_digest,
    write_file_atomically,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

SHA256_HEADER = "x-amz-meta-sha256"
_NOT_FOUND_CODES = {"NoSuchKey", "NoSuchBucket", "ResourceNotFound"}
_TRANSIENT_CODES = {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable"}
CONNECTIONS_PER_HOST = 16  # kept open for reuse, per S3 endpoint

# Connection refused is a NewConnectionError, itself a urllib3 TimeoutError; a reset is a ProtocolError.
_NETWORK_ERRORS = (urllib3.exceptions.TimeoutError, urllib3.exceptions.ProtocolError)


def _is_transient(exc: Exception) -> bool:
    """Whether retrying the request may succeed."""
    if isinstance(exc, S3Error):
        return exc.code in _TRANSIENT_CODES or exc.response.status >= 500
    if isinstance(exc, ServerError):
        return exc.status_code >= 500
    if isinstance(exc, InvalidResponseError):  # e.g. an HTML 502 from a proxy
        return exc._code >= 500  # minio keeps the status only in this attribute
    return isinstance(exc, _NETWORK_ERRORS)


class S3Store(ObjectStore):
    """An ObjectStore on an S3-protocol server at `endpoint` ('host:port', no scheme)."""

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        *,
        secure: bool = True,
        region: str | None = None,
        retries: int = 4,
        retry_delay: float = 0.5,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
    ) -> None:
        if retries < 1:
            raise ConfigError(f"storage retries must be at least 1, got {retries}")
        self.url = f"{'https' if secure else 'http'}://{endpoint}"
        self.region = region
        self.retries = retries
        self.retry_delay = retry_delay
        # Our retry loop replaces urllib3's, so that the attempts and the final error are ours to report. A store is
        # shared by a service's threads (the gRPC worker pool, a job's uploads): urllib3's default pool keeps one
        # connection per host and discards the others with a "Connection pool is full" warning each time.
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            retries=False,
            maxsize=CONNECTIONS_PER_HOST,
        )
        try:
            self._client = Minio(
                endpoint, access_key=access_key, secret_key=secret_key, secure=secure, region=region, http_client=http
            )
        except ValueError as exc:
            raise ConfigError(f"invalid S3 endpoint {endpoint!r} (expected host:port): {exc}") from exc

    def __repr__(self) -> str:
        return f"S3Store({self.url!r})"

    def _call(self, action: str, bucket: str, key: str | None, operation: Callable[[], T]) -> T:
        """Run `operation`, retrying transient failures with exponential backoff, and translate its errors."""
        target = object_uri(bucket, key) if key else f"bucket {bucket!r}"
        for attempt in range(1, self.retries + 1):
            try:
                return operation()
            except (MinioException, urllib3.exceptions.HTTPError) as exc:
                if isinstance(exc, S3Error) and exc.code in _NOT_FOUND_CODES:
                    if exc.code == "NoSuchBucket" or key is None:
                        message = f"bucket {bucket!r} does not exist at {self.url} (create it with ensure_bucket)"
                    else:
                        message = f"object {target} not found at {self.url}"
                    raise NotFoundError(message) from exc
                if not _is_transient(exc):
                    raise StorageError(f"{action} {target} failed at {self.url}: {exc}") from exc
                error = exc
            if attempt < self.retries:
                delay = self.retry_delay * 2 ** (attempt - 1)
                logger.warning(
                    "%s %s at %s failed (attempt %d of %d): %s; retrying in %.2f s",
                    action,
                    target,
                    self.url,
                    attempt,
                    self.retries,
                    error,
                    delay,
                )
                time.sleep(delay)
        raise StorageUnavailableError(
            f"object storage at {self.url} is unreachable after {self.retries} attempts: {error}"
        ) from error

    @contextmanager
    def _download(self, bucket: str, key: str) -> Iterator[tuple[urllib3.BaseHTTPResponse, str]]:
        """An open GET response for the object and its stored sha256."""
        response = self._client.get_object(bucket, key)
        try:
            yield response, require_sha256(response.headers.get(SHA256_HEADER), object_uri(bucket, key))
        finally:
            response.close()
            response.release_conn()

    def ensure_bucket(self, bucket: str) -> None:
        validate_bucket(bucket)

        def create() -> None:
            if self._client.bucket_exists(bucket):
                return
            try:
                self._client.make_bucket(bucket, location=self.region)
            except S3Error as exc:  # created meanwhile by another client of ours
                if exc.code != "BucketAlreadyOwnedByYou":
                    raise

        self._call("create", bucket, None, create)

    def put_bytes(
        self, bucket: str, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> ObjectRef:
        ref = ObjectRef(validate_bucket(bucket), validate_key(key), hashlib.sha256(data).hexdigest(), len(data))
        self._call(
            "put",
            bucket,
            key,
            lambda: self._client.put_object(
                bucket, key, io.BytesIO(data), len(data), content_type=content_type, metadata={"sha256": ref.sha256}
            ),
        )
        return ref

    def put_file(
        self, bucket: str, key: str, path: str | Path, content_type: str = "application/octet-stream"
    ) -> ObjectRef:
        source = file_to_upload(path)
        ref = ObjectRef(validate_bucket(bucket), validate_key(key), sha256_file(source), source.stat().st_size)
        self._call(
            "put",
            bucket,
            key,
            lambda: self._client.fput_object(
                bucket, key, str(source), content_type=content_type, metadata={"sha256": ref.sha256}
            ),
        )
        return ref

    def get_bytes(self, bucket: str, key: str) -> bytes:
        uri = object_uri(validate_bucket(bucket), validate_key(key))

        def fetch() -> bytes:
            with self._download(bucket, key) as (response, sha256):
                data = response.read()
            verify_digest(hashlib.sha256(data).hexdigest(), sha256, uri)
            return data

        return self._call("get", bucket, key, fetch)

    def get_file(self, bucket: str, key: str, path: str | Path) -> ObjectRef:
        uri = object_uri(validate_bucket(bucket), validate_key(key))

        def fetch() -> ObjectRef:
            with self._download(bucket, key) as (response, sha256):
                size = write_file_atomically(path, response.stream(CHUNK_SIZE), sha256, uri)
            return ObjectRef(bucket, key, sha256, size)

        return self._call("get", bucket, key, fetch)

    def stat(self, bucket: str, key: str) -> ObjectRef:
        uri = object_uri(validate_bucket(bucket), validate_key(key))
        info = self._call("stat", bucket, key, lambda: self._client.stat_object(bucket, key))
        return ObjectRef(bucket, key, require_sha256(info.metadata.get(SHA256_HEADER), uri), info.size)

    def list(self, bucket: str, prefix: str = "") -> Iterator[ObjectRef]:
        validate_bucket(bucket)
        validate_prefix(prefix)
        keys = self._call(
            "list",
            bucket,
            None,
            lambda: sorted(
                item.object_name for item in self._client.list_objects(bucket, prefix=prefix, recursive=True)
            ),
        )
        return iter([self.stat(bucket, key) for key in keys])

    def presigned_get_url(self, bucket: str, key: str, expires: timedelta = timedelta(minutes=15)) -> str:
        """A URL that lets whoever holds it GET the object for `expires` (it names the access key, never the secret)."""
        validate_bucket(bucket)
        validate_key(key)
        return self._call("presign", bucket, key, lambda: self._client.presigned_get_object(bucket, key, expires))

    def delete(self, bucket: str, key: str) -> None:
        validate_bucket(bucket)
        validate_key(key)
        self._call("delete", bucket, key, lambda: self._client.remove_object(bucket, key))
