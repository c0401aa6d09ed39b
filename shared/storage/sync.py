"""Copy a whole prefix between object storage and a local directory (services run the CLI code on local files).

    refs = download_prefix(store, "datasets", "pneumoniamnist/", Path("/tmp/data"))   # /tmp/data/<rest of key>
    refs = upload_dir(store, Path("/tmp/out"), "models", "runs/r1/gan/")              # key = prefix + relative path

Both directions skip a file whose sha256 already matches the object's (a cache that re-syncs cheaply); every file is
written atomically. Uploads go in sorted order, so a caller that wants a "done" marker uploads it last itself.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from shared.images import sha256_file
from shared.storage.base import NotFoundError, ObjectRef, ObjectStore, object_uri, validate_prefix


def download_prefix(
    store: ObjectStore,
    bucket: str,
    prefix: str,
    dest: Path,
    check: Callable[[], None] | None = None,
) -> list[ObjectRef]:
    """Download every object under `prefix` to `dest`/<key without prefix>; NotFoundError when there is none.

    `check`, when given, runs before each object (e.g. to stop on cancellation by raising).
    """
    validate_prefix(prefix)
    if prefix and not prefix.endswith("/"):
        prefix += "/"  # "data/a" must not pick up "data/ab/..."
    refs = list(store.list(bucket, prefix))
    if not refs:
        raise NotFoundError(f"no objects under {object_uri(bucket, prefix)}")
    for ref in refs:
        if check is not None:
            check()
        path = dest / ref.key[len(prefix) :].lstrip("/")
        if path.is_file() and path.stat().st_size == ref.size and sha256_file(path) == ref.sha256:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        store.get_file(bucket, ref.key, path)
    return refs


def upload_dir(
    store: ObjectStore,
    src: Path,
    bucket: str,
    prefix: str,
    check: Callable[[], None] | None = None,
) -> list[ObjectRef]:
    """Upload every file under `src` (recursively, sorted) to `prefix` + its relative path, unless the stored object
    already has its bytes; return the refs."""
    validate_prefix(prefix)
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    store.ensure_bucket(bucket)
    refs = []
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        if check is not None:
            check()
        key = prefix + path.relative_to(src).as_posix()
        stored = _stored(store, bucket, key)
        if stored is not None and stored.size == path.stat().st_size and stored.sha256 == sha256_file(path):
            refs.append(stored)
            continue
        refs.append(store.put_file(bucket, key, path))
    return refs


def _stored(store: ObjectStore, bucket: str, key: str) -> ObjectRef | None:
    try:
        return store.stat(bucket, key)
    except NotFoundError:
        return None
