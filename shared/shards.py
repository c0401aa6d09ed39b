"""Synthetic images stored as shards: one object holds up to N images, written while the generator keeps drawing.

Format: an uncompressed `.npz` (numpy's zip of `.npy` arrays), chosen over a WebDataset tar because
  - the images go in as the generator's raw uint8 pixels: no per-image PNG encoding, which is what made one file per
    image cost ~8x the forward pass at 32 px (bench/results.md); a tar of PNGs would keep that cost;
  - numpy reads it with `np.load(..., allow_pickle=False)` (no new dependency, no code execution), the trainer gets
    one N x H x W array per shard, and each member carries a CRC-32 that zipfile checks on read;
  - the bytes are deterministic (fixed member timestamps, see encode_shard), so the same request stores the same
    objects and the manifest's sha256 of a shard identifies its content.
Members: images (uint8 N x H x W, or N x H x W x 3 for an RGB generator), labels (int64 N), ids (the image's name in
the per-image PNG layout, e.g. synthetic_pneumonia_000123.png: the same patient ids whichever layout is read),
indices (int64 N: image i's latent is seeded by (seed, index)), seed and generator_sha256 (scalars). The shard
describes itself, so a killed generation resumes by keeping the stored shards whose content matches the request.

Writing: BoundedWriter runs the encoding, hashing and storing of finished shards on a few threads while the caller
draws the next batches, with at most `max_pending` shards queued or in flight (memory stays bounded: the caller
blocks when the writers fall behind).
"""

from __future__ import annotations

import hashlib
import io
import threading
import zipfile
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from shared.datasets.base import CLASS_NAMES
from shared.errors import DatasetError
from shared.images import atomic_write_bytes

SHARD_SUFFIX = ".npz"
SHARD_CONTENT_TYPE = "application/x-npz"
DEFAULT_SHARD_SIZE = 1024  # images per shard: 1 MiB at 32 px gray, 12 MiB at 64 px RGB
MEMBERS = ("images", "labels", "ids", "indices", "seed", "generator_sha256")
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed member timestamps: the same images give the same bytes

R = TypeVar("R")


class ShardIntegrityError(DatasetError):
    """A shard whose bytes do not hash to the sha256 its manifest records: corrupt, truncated or replaced."""


def image_id(label: int, index: int) -> str:
    """Image `index` of class `label`: its file name in the PNG layout and its id inside a shard."""
    return f"synthetic_{CLASS_NAMES[label]}_{index:06d}.png"


def shard_name(label: int, first: int, count: int) -> str:
    """The shard holding images first..first+count-1 of class `label`, e.g. synthetic_normal_000000-001023.npz."""
    return f"synthetic_{CLASS_NAMES[label]}_{first:06d}-{first + count - 1:06d}{SHARD_SUFFIX}"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Shard:
    """The content of one shard (see the module docstring)."""

    images: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    indices: np.ndarray
    seed: int
    generator_sha256: str

    @classmethod
    def of(cls, images: np.ndarray, label: int, first: int, seed: int, generator_sha256: str) -> Shard:
        """Images first, first+1, ... of class `label` drawn with `seed` by the generator with that sha256."""
        indices = np.arange(first, first + len(images), dtype=np.int64)
        ids = np.array([image_id(label, int(i)) for i in indices], dtype=str)
        return cls(images, np.full(len(images), label, dtype=np.int64), ids, indices, seed, generator_sha256)


def encode_shard(shard: Shard) -> bytes:
    """The shard as deterministic, uncompressed .npz bytes."""
    if shard.images.dtype != np.uint8 or shard.images.ndim not in (3, 4):
        raise ValueError(f"shard images must be uint8 N x H x W (x 3), got {shard.images.dtype} {shard.images.shape}")
    arrays = {
        "images": np.ascontiguousarray(shard.images),
        "labels": shard.labels.astype(np.int64),
        "ids": shard.ids.astype(str),
        "indices": shard.indices.astype(np.int64),
        "seed": np.array(shard.seed, dtype=np.int64),
        "generator_sha256": np.array(shard.generator_sha256, dtype=str),
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)
    return buffer.getvalue()


def verify_sha256(data: bytes, expected: str, where: str) -> None:
    """ShardIntegrityError naming the shard when `data` does not hash to `expected`."""
    actual = sha256_hex(data)
    if actual != expected:
        raise ShardIntegrityError(
            f"{where}: sha256 {actual} does not match the manifest's {expected}: the shard is corrupt or was replaced "
            "after the manifest was written; regenerate the synthetic images"
        )


def decode_shard(data: bytes, where: str) -> Shard:
    """The shard in `data`; DatasetError naming `where` for bytes that are not a well-formed shard."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            members = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise DatasetError(f"{where}: not a readable shard ({exc})") from exc
    missing = [name for name in MEMBERS if name not in members]
    if missing:
        raise DatasetError(f"{where}: not a synthetic-image shard (missing {', '.join(missing)})")
    images, ids = members["images"], members["ids"]
    n = len(images)
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] != 3):
        raise DatasetError(
            f"{where}: images must be uint8 N x H x W or N x H x W x 3, got {images.dtype} {images.shape}"
        )
    if ids.dtype.kind != "U" or any(len(members[name]) != n for name in ("labels", "ids", "indices")):
        raise DatasetError(f"{where}: images, labels, ids and indices differ in length or type")
    return Shard(
        images,
        members["labels"].astype(np.int64),
        ids,
        members["indices"].astype(np.int64),
        int(members["seed"]),
        str(members["generator_sha256"]),
    )


class ShardSink(Protocol[R]):
    """Where a generation's objects go: a local folder, or a prefix in object storage (names are relative)."""

    def stored(self) -> set[str]:
        """The names already there (a killed generation's shards among them)."""

    def read(self, name: str) -> tuple[bytes, R]:
        """The bytes stored under `name` and their reference."""

    def write(self, name: str, data: bytes, content_type: str) -> R:
        """Store `data` under `name` (atomically: readers never see half of it); its reference."""


class BoundedWriter(Generic[R]):
    """Runs write jobs on `workers` threads, at most `max_pending` queued or running: `submit` blocks when full.

    `completed()` returns the results finished since the last call (and raises the first job's error), `rest()`
    waits for the others, `results()` returns every result in submission order. Used as a context manager, an error in
    the caller cancels the jobs not started and waits for the running ones.
    """

    def __init__(self, workers: int = 2, max_pending: int | None = None) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="shard-writer")
        self._slots = threading.BoundedSemaphore(max_pending or 2 * workers)
        self._futures: list[Future[R]] = []
        self._reported = 0

    def submit(self, job: Callable[..., R], *args: Any) -> None:
        self._slots.acquire()
        try:
            future = self._pool.submit(job, *args)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _: self._slots.release())
        self._futures.append(future)

    def completed(self) -> list[R]:
        """Results of the jobs finished (in submission order, up to the first still running) since the last call."""
        done = []
        while self._reported < len(self._futures) and self._futures[self._reported].done():
            done.append(self._futures[self._reported].result())  # raises the job's error
            self._reported += 1
        return done

    def rest(self) -> list[R]:
        """Wait for every job; the results `completed()` has not returned yet."""
        done = [future.result() for future in self._futures[self._reported :]]
        self._reported = len(self._futures)
        return done

    def results(self) -> list[R]:
        """Every job's result in submission order (waits for them)."""
        return [future.result() for future in self._futures]

    def __enter__(self) -> BoundedWriter[R]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=exc_info[0] is not None)


WRITE_WORKERS = 2  # threads encoding and storing shards while the generator draws the next ones


class FolderSink:
    """A ShardSink on a local folder: atomic file writes; references are the paths."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def stored(self) -> set[str]:
        return {path.name for path in self.directory.iterdir() if path.is_file()} if self.directory.is_dir() else set()

    def read(self, name: str) -> tuple[bytes, Path]:
        path = self.directory / name
        return path.read_bytes(), path

    def write(self, name: str, data: bytes, content_type: str) -> Path:
        atomic_write_bytes(self.directory / name, data)
        return self.directory / name
