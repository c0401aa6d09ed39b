"""LocalStore: objects as plain files under a root directory (the embedded default backend).

Layout under the root:
    <bucket>/<key>            the object's bytes ('/' in keys become subdirectories)
    .sha256/<bucket>/<key>    the object's sha256 (hex)
    .pending/<bucket>/<h>     the sha256 of bytes being put, and the key (h: the sha256 of the key, so one flat
                              folder): written before the bytes replace the object's, removed once .sha256/ holds it,
                              so a writer killed between the two leaves a readable object
    .tmp/                     uploads in progress (same filesystem as the objects, so os.replace is atomic)
Bucket names never start with '.', so these directories cannot clash with a bucket.

A put is: bytes to .tmp/, their sha256 to .pending/, the bytes over the object (atomic), the sha256 to .sha256/
(atomic), the pending file removed. A reader that finds a pending sha256 hashes the object's bytes: when they match
it, the put got as far as the bytes and the reader completes it; otherwise the object is still the old one, whose
sha256 is in place.
Opening a store removes temp and pending files that no write has touched for STALE_AFTER_S (killed writers').

Content types are not kept. One key cannot be both an object and a "directory" of others (e.g. 'a' and
'a/b'): the second put raises StorageError. Readers may run concurrently with a writer; write each key
from one writer at a time.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from shared.images import atomic_write_bytes
from shared.storage.base import (
    CHUNK_SIZE,
    NotFoundError,
    ObjectRef,
    ObjectStore,
    StorageError,
    file_to_upload,
    object_uri,
    require_sha256,
    validate_bucket,
    validate_key,
    validate_prefix,
    verify_digest,
    write_file_atomically,
    write_temp_file,
)

SHA256_DIR = ".sha256"
PENDING_DIR = ".pending"
TMP_DIR = ".tmp"
STALE_AFTER_S = 3600.0  # a temp or pending file untouched this long belongs to a writer that was killed


def _read_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK_SIZE):
            yield chunk


def _remove_empty_dirs(directory: Path, stop: Path) -> None:
    """Remove `directory` and its parents up to (not including) `stop` while they are empty."""
    while directory != stop:
        try:
            directory.rmdir()
        except OSError:  # not empty, or already gone
            return
        directory = directory.parent


class LocalStore(ObjectStore):
    """An ObjectStore in a directory of the local filesystem."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).absolute()
        self.sweep_stale()

    def sweep_stale(self, older_than_s: float = STALE_AFTER_S) -> int:
        """Remove the temp and pending files of writers killed mid-put (untouched for `older_than_s`); returns how
        many. Objects whose put got as far as the bytes are completed first, so nothing readable is lost."""
        removed, deadline = 0, time.time() - older_than_s
        for top in (self.root / TMP_DIR, self.root / PENDING_DIR):
            for directory, _, names in os.walk(top):
                for name in names:
                    path = Path(directory) / name
                    try:
                        if path.stat().st_mtime >= deadline:
                            continue
                    except OSError:
                        continue
                    if top.name == PENDING_DIR:
                        with contextlib.suppress(OSError, StorageError, ValueError, IndexError):  # e.g. a temp file
                            bucket, key = path.parent.name, path.read_text().split("\n")[1]
                            self._complete_pending_put(bucket, key)
                    with contextlib.suppress(OSError):
                        path.unlink(missing_ok=True)
                        removed += 1
        return removed

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def _bucket_dir(self, bucket: str) -> Path:
        path = self.root / validate_bucket(bucket)
        if not path.is_dir():
            raise NotFoundError(f"bucket {bucket!r} does not exist in {self.root} (create it with ensure_bucket)")
        return path

    def _paths(self, bucket: str, key: str) -> tuple[Path, Path]:
        """The object's data file and its sha256 file; NotFoundError if the bucket is missing."""
        data_path = self._bucket_dir(bucket) / validate_key(key)
        return data_path, self.root / SHA256_DIR / bucket / key

    def _pending_path(self, bucket: str, key: str) -> Path:
        return self.root / PENDING_DIR / bucket / hashlib.sha256(key.encode()).hexdigest()

    def _complete_pending_put(self, bucket: str, key: str) -> None:
        """If a put of this object got as far as its bytes (they hash to the pending sha256), write that sha256 into
        place and remove the pending file; a pending file of a put that did not get there is left to the sweep."""
        data_path, sha256_path = self._paths(bucket, key)
        pending_path = self._pending_path(bucket, key)
        try:
            pending = pending_path.read_text().split("\n")[0]
            digest = hashlib.sha256()
            for chunk in _read_chunks(data_path):
                digest.update(chunk)
            if digest.hexdigest() == pending:
                atomic_write_bytes(sha256_path, f"{pending}\n".encode())
                pending_path.unlink(missing_ok=True)  # the writer or another reader may have got there first
        except FileNotFoundError:  # no pending put, or its writer finished first
            return
        except OSError as exc:
            raise StorageError(f"cannot complete the put of {object_uri(bucket, key)} in {self.root}: {exc}") from exc

    def _existing(self, bucket: str, key: str) -> tuple[Path, str]:
        """The data file of an existing object and its stored sha256 (a put killed between the two completed)."""
        data_path, sha256_path = self._paths(bucket, key)
        uri = object_uri(bucket, key)
        if not data_path.is_file():
            raise NotFoundError(f"object {uri} not found in {self.root}")
        if self._pending_path(bucket, key).is_file():
            self._complete_pending_put(bucket, key)
        try:
            stored = sha256_path.read_text().strip() if sha256_path.is_file() else None
        except OSError as exc:
            raise StorageError(f"cannot read the sha256 of {uri} in {self.root}: {exc}") from exc
        return data_path, require_sha256(stored, uri)

    def ensure_bucket(self, bucket: str) -> None:
        try:
            (self.root / validate_bucket(bucket)).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create bucket {bucket!r} in {self.root}: {exc}") from exc

    def put_bytes(
        self, bucket: str, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> ObjectRef:
        return self._put(bucket, key, [data])

    def put_file(
        self, bucket: str, key: str, path: str | Path, content_type: str = "application/octet-stream"
    ) -> ObjectRef:
        return self._put(bucket, key, _read_chunks(file_to_upload(path)))

    def _put(self, bucket: str, key: str, chunks: Iterable[bytes]) -> ObjectRef:
        data_path, sha256_path = self._paths(bucket, key)
        try:
            (self.root / TMP_DIR).mkdir(exist_ok=True)
            tmp, sha256, size = write_temp_file(self.root / TMP_DIR, chunks)
            pending_path = self._pending_path(bucket, key)
            try:
                atomic_write_bytes(pending_path, f"{sha256}\n{key}\n".encode())
                try:
                    data_path.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(tmp, data_path)
                except BaseException:
                    pending_path.unlink(missing_ok=True)
                    raise
                atomic_write_bytes(sha256_path, f"{sha256}\n".encode())
                pending_path.unlink(missing_ok=True)  # a reader may have completed the put already
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise StorageError(f"cannot write {object_uri(bucket, key)} in {self.root}: {exc}") from exc
        return ObjectRef(bucket, key, sha256, size)

    def get_bytes(self, bucket: str, key: str) -> bytes:
        data_path, sha256 = self._existing(bucket, key)
        data = b"".join(self._read(data_path, bucket, key))
        verify_digest(hashlib.sha256(data).hexdigest(), sha256, object_uri(bucket, key))
        return data

    def get_file(self, bucket: str, key: str, path: str | Path) -> ObjectRef:
        data_path, sha256 = self._existing(bucket, key)
        size = write_file_atomically(path, self._read(data_path, bucket, key), sha256, object_uri(bucket, key))
        return ObjectRef(bucket, key, sha256, size)

    def _read(self, data_path: Path, bucket: str, key: str) -> Iterator[bytes]:
        try:
            yield from _read_chunks(data_path)
        except OSError as exc:
            raise StorageError(f"cannot read {object_uri(bucket, key)} in {self.root}: {exc}") from exc

    def stat(self, bucket: str, key: str) -> ObjectRef:
        data_path, sha256 = self._existing(bucket, key)
        return ObjectRef(bucket, key, sha256, data_path.stat().st_size)

    def list(self, bucket: str, prefix: str = "") -> Iterator[ObjectRef]:
        bucket_dir = self._bucket_dir(bucket)
        start = bucket_dir / validate_prefix(prefix).rpartition("/")[0]
        keys = []
        for directory, _, names in os.walk(start):
            for name in names:
                key = (Path(directory) / name).relative_to(bucket_dir).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return iter([self.stat(bucket, key) for key in sorted(keys)])

    def delete(self, bucket: str, key: str) -> None:
        data_path, sha256_path = self._paths(bucket, key)
        try:
            self._pending_path(bucket, key).unlink(missing_ok=True)
            for path, top in ((data_path, self.root / bucket), (sha256_path, self.root / SHA256_DIR / bucket)):
                if path.is_file():
                    path.unlink(missing_ok=True)
                    _remove_empty_dirs(path.parent, top)
        except OSError as exc:
            raise StorageError(f"cannot delete {object_uri(bucket, key)} in {self.root}: {exc}") from exc
