"""Moving a job's files: stored prefixes mirrored into local caches, local output folders uploaded as they change."""

from __future__ import annotations

import mimetypes
from collections.abc import Callable
from pathlib import Path

from shared.storage import ObjectRef, ObjectStore
from shared.storage.sync import download_prefix


def as_folder(prefix: str) -> str:
    """`prefix` as a folder: '' or ending in '/'."""
    return prefix if not prefix or prefix.endswith("/") else prefix + "/"


def fetch_prefix(
    store: ObjectStore, bucket: str, prefix: str, dest: Path, check: Callable[[], None] | None = None
) -> None:
    """Make `dest` an exact copy of the prefix: download what changed, delete local files no longer stored."""
    refs = download_prefix(store, bucket, prefix, dest, check)
    folder = as_folder(prefix)
    wanted = {dest / ref.key[len(folder) :].lstrip("/") for ref in refs}
    for path in [p for p in dest.rglob("*") if p.is_file() and p not in wanted]:
        path.unlink()


class OutputSync:
    """Uploads the files of a job's local output folders, each once per change, and remembers what is stored."""

    def __init__(self, store: ObjectStore, destinations: list[tuple[Path, str, str]], stored: list[ObjectRef]):
        self.store = store
        self.destinations = destinations
        self.refs = {(ref.bucket, ref.key): ref for ref in stored}
        self._uploaded: dict[Path, tuple[int, int]] = {}

    def sync(self) -> int:
        """Upload every new or changed file; return how many."""
        count = 0
        for folder, bucket, prefix in self.destinations:
            if not folder.is_dir():
                continue
            self.store.ensure_bucket(bucket)
            for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
                stat = path.stat()
                signature = (stat.st_mtime_ns, stat.st_size)
                if self._uploaded.get(path) == signature:
                    continue
                key = prefix + path.relative_to(folder).as_posix()
                content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
                self.refs[(bucket, key)] = self.store.put_file(bucket, key, path, content_type)
                self._uploaded[path] = signature
                count += 1
        return count

    def outputs(self) -> list[ObjectRef]:
        return [self.refs[k] for k in sorted(self.refs)]
