"""The object storage interface: ObjectRef, ObjectStore, name validation and the storage errors."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from shared.errors import PneumoniaError

CHUNK_SIZE = 1 << 20
MAX_KEY_BYTES = 1024
_BUCKET_PATTERN = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


class StorageError(PneumoniaError):
    """An object storage operation failed; the message names the object and the store."""


class CorruptObjectError(StorageError):
    """An object whose bytes do not match its stored sha256, or that has none: retrying will not help."""


class StorageUnavailableError(StorageError):
    """The storage server stayed unreachable (or kept failing) through every retry."""


class NotFoundError(StorageError):
    """The bucket or object does not exist."""


class InvalidKeyError(StorageError):
    """A bucket name or object key that breaks the naming rules."""


@dataclass(frozen=True)
class ObjectRef:
    """What identifies a stored object everywhere (gRPC messages carry exactly these fields)."""

    bucket: str
    key: str
    sha256: str  # hex digest of the object's bytes
    size: int  # bytes

    @property
    def uri(self) -> str:
        return object_uri(self.bucket, self.key)


def object_uri(bucket: str, key: str) -> str:
    """A readable name for messages, e.g. 's3://models/classifier/best.pt'."""
    return f"s3://{bucket}/{key}"


def validate_bucket(bucket: str) -> str:
    """Check a bucket name against the S3 rules; raise InvalidKeyError saying which rule it breaks."""
    if not isinstance(bucket, str) or not _BUCKET_PATTERN.fullmatch(bucket):
        raise InvalidKeyError(
            f"invalid bucket name {bucket!r}: use 3-63 lowercase letters, digits, '.' or '-', "
            "starting and ending with a letter or digit"
        )
    if ".." in bucket or ".-" in bucket or "-." in bucket:
        raise InvalidKeyError(f"invalid bucket name {bucket!r}: no '..', '.-' or '-.'")
    try:
        ipaddress.IPv4Address(bucket)
    except ValueError:
        pass
    else:
        raise InvalidKeyError(f"invalid bucket name {bucket!r}: must not look like an IP address")
    if bucket.startswith(("xn--", "sthree-")) or bucket.endswith(("-s3alias", "--ol-s3")):
        raise InvalidKeyError(f"invalid bucket name {bucket!r}: reserved prefix or suffix")
    return bucket


def validate_key(key: str) -> str:
    """Check an object key; raise InvalidKeyError saying which rule it breaks.

    Keys are '/'-separated segments that map onto files of LocalStore: no empty, '.' or '..' segment, no
    leading '/', no backslash, no control characters, at most 1024 bytes of UTF-8.
    """
    if not isinstance(key, str) or not key:
        raise InvalidKeyError(f"invalid object key {key!r}: must be a non-empty string")
    if len(key.encode("utf-8", errors="surrogatepass")) > MAX_KEY_BYTES:
        raise InvalidKeyError(f"invalid object key {key[:40]!r}...: longer than {MAX_KEY_BYTES} bytes")
    if key.startswith("/"):
        raise InvalidKeyError(f"invalid object key {key!r}: must not start with '/'")
    if "\\" in key:
        raise InvalidKeyError(f"invalid object key {key!r}: must not contain a backslash")
    if _CONTROL_CHARS.search(key):
        raise InvalidKeyError(f"invalid object key {key!r}: must not contain control characters")
    if any(segment in ("", ".", "..") for segment in key.split("/")):
        raise InvalidKeyError(f"invalid object key {key!r}: no empty, '.' or '..' path segment")
    return key


def validate_prefix(prefix: str) -> str:
    """A listing prefix is valid when some valid key can start with it (the empty prefix lists all)."""
    if prefix:
        try:
            validate_key(prefix + "_")
        except InvalidKeyError as exc:
            raise InvalidKeyError(f"invalid listing prefix {prefix!r}: no valid key can start with it") from exc
    return prefix


def require_sha256(stored: str | None, uri: str) -> str:
    """The sha256 stored with an object; CorruptObjectError if there is none (it was written by another tool)."""
    if not stored:
        raise CorruptObjectError(f"{uri} has no stored sha256; write it through shared.storage (put_bytes or put_file)")
    return stored


def verify_digest(actual: str, expected: str, uri: str) -> None:
    """Raise CorruptObjectError when the bytes read hash differently from the stored sha256."""
    if actual != expected:
        raise CorruptObjectError(
            f"{uri} is corrupt: its bytes hash to sha256 {actual}, the stored sha256 is {expected}"
        )


def write_temp_file(directory: Path, chunks: Iterable[bytes], prefix: str = ".") -> tuple[Path, str, int]:
    """Stream `chunks` into a new, fsynced temp file in `directory`; return (its path, sha256 hex, size).

    On failure the temp file is removed; on success the caller renames it into place or removes it.
    """
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=".tmp")
    try:
        digest, size = hashlib.sha256(), 0
        with os.fdopen(fd, "wb") as fh:
            for chunk in chunks:
                digest.update(chunk)
                fh.write(chunk)
                size += len(chunk)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp), digest.hexdigest(), size


def write_file_atomically(path: str | Path, chunks: Iterable[bytes], expected_sha256: str, uri: str) -> int:
    """Stream `chunks` (the bytes of object `uri`) into the local file `path`; return the size.

    The bytes go to a temp file in the same directory and are verified against `expected_sha256` before the
    rename over `path`: on any failure `path` is left as it was and no temp file remains.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp, sha256, size = write_temp_file(path.parent, chunks, prefix=f".{path.name}.")
        try:
            verify_digest(sha256, expected_sha256, uri)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {exc}") from exc
    return size


def file_to_upload(path: str | Path) -> Path:
    """The local file named for put_file; StorageError if it is not a readable regular file."""
    path = Path(path)
    if not path.is_file():
        raise StorageError(f"file to upload not found: {path}")
    return path


class ObjectStore(ABC):
    """Buckets of immutable-looking objects addressed by (bucket, key), each stored with its sha256.

    Every get verifies the bytes against the stored sha256 (StorageError on a mismatch); no reader ever
    sees a half-written object. Missing buckets or objects raise NotFoundError; bad names InvalidKeyError.
    """

    @abstractmethod
    def ensure_bucket(self, bucket: str) -> None:
        """Create the bucket unless it exists."""

    @abstractmethod
    def put_bytes(
        self, bucket: str, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> ObjectRef:
        """Store `data` under `key`, replacing any object there."""

    @abstractmethod
    def put_file(
        self, bucket: str, key: str, path: str | Path, content_type: str = "application/octet-stream"
    ) -> ObjectRef:
        """Store the contents of the local file `path` under `key`, replacing any object there."""

    @abstractmethod
    def get_bytes(self, bucket: str, key: str) -> bytes:
        """The object's bytes, verified against its sha256."""

    @abstractmethod
    def get_file(self, bucket: str, key: str, path: str | Path) -> ObjectRef:
        """Download the object to the local file `path` atomically (no partial file on failure)."""

    @abstractmethod
    def stat(self, bucket: str, key: str) -> ObjectRef:
        """The object's reference (sha256 and size) without reading its bytes."""

    @abstractmethod
    def list(self, bucket: str, prefix: str = "") -> Iterator[ObjectRef]:
        """The objects whose keys start with `prefix`, in sorted key order."""

    @abstractmethod
    def delete(self, bucket: str, key: str) -> None:
        """Remove the object; deleting a missing object is not an error (as in S3)."""

    def exists(self, bucket: str, key: str) -> bool:
        """Whether the object exists."""
        try:
            self.stat(bucket, key)
        except NotFoundError:
            return False
        return True
