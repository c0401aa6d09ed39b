"""A folder of GAN-generated images and `manifest.csv`, the one record of what it holds, in one of two layouts.

shards (the default, shared.shards): `.npz` shards of up to N images each; manifest.csv has one row per shard,
    columns shard (file name inside the folder), sha256 (of the shard's bytes, checked on every read), label
    (0 normal, 1 pneumonia), seed, first_index and count (the shard holds images first_index..first_index+count-1
    of a run with that seed), generator_sha256 (sha256 of the generator checkpoint file).
png (one file per image, for browsing; `export_pngs` derives it from shards): manifest.csv has one row per image,
    columns file (name inside the folder), label, seed, index (its latent comes from the RNG seeded with
    (seed, index)), generator_sha256.

The header says which layout a folder has. Only what the manifest lists belongs to the synthetic set. Both layouts
give the same images under the same ids (`synthetic_<label>_<index:06d>.png`), so a stored run in either layout
trains the same classifier.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from shared.datasets.base import CLASS_NAMES, ArrayImages, FileImages, LabelledImages
from shared.errors import DatasetError
from shared.images import atomic_write_bytes, save_png
from shared.shards import SHARD_SUFFIX, decode_shard, image_id, verify_sha256

MANIFEST_NAME = "manifest.csv"
SYNTHETIC_PREFIX = "synthetic-"  # patient id prefix of every synthetic image: keeps them out of evaluation
MANIFEST_COLUMNS = ("file", "label", "seed", "index", "generator_sha256")
SHARD_MANIFEST_COLUMNS = ("shard", "sha256", "label", "seed", "first_index", "count", "generator_sha256")
Layout = Literal["shards", "png"]
LAYOUTS: tuple[Layout, ...] = ("shards", "png")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ManifestRow:
    """One synthetic image (in the shard layout `file` is its id, the name it has in the PNG layout)."""

    file: str
    label: int
    seed: int
    index: int
    generator_sha256: str


@dataclass(frozen=True)
class ShardRow:
    """One shard: images first_index..first_index+count-1 of class `label`, drawn with `seed`."""

    shard: str
    sha256: str
    label: int
    seed: int
    first_index: int
    count: int
    generator_sha256: str

    def image_rows(self) -> list[ManifestRow]:
        """The images the shard holds, in order."""
        return [
            ManifestRow(image_id(self.label, i), self.label, self.seed, i, self.generator_sha256)
            for i in range(self.first_index, self.first_index + self.count)
        ]


@dataclass(frozen=True)
class Manifest:
    """A parsed manifest.csv: its layout, its images, and its shards (empty in the PNG layout)."""

    layout: Layout
    images: list[ManifestRow]
    shards: list[ShardRow]


# ---------------------------------------------------------------- reading and writing manifest.csv


def parse_manifest(text: str, where: str) -> Manifest:
    """manifest.csv's text in either layout; DatasetError naming `where` and the line for a malformed one."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = tuple(reader.fieldnames or ())
    if columns not in (MANIFEST_COLUMNS, SHARD_MANIFEST_COLUMNS):
        raise DatasetError(
            f"{where}: expected columns {','.join(SHARD_MANIFEST_COLUMNS)} (shards) or {','.join(MANIFEST_COLUMNS)} "
            f"(PNG files), got {reader.fieldnames}"
        )
    if columns == MANIFEST_COLUMNS:
        images = [_image_row(record, where, line) for line, record in enumerate(reader, start=2)]
        return Manifest("png", images, [])
    shards = [_shard_row(record, where, line) for line, record in enumerate(reader, start=2)]
    images = [image for shard in shards for image in shard.image_rows()]
    seen: set[str] = set()
    for image in images:
        if image.file in seen:
            raise DatasetError(f"{where}: image {image.file} is in more than one shard")
        seen.add(image.file)
    return Manifest("shards", images, shards)


def _image_row(record: dict[str, str], where: str, line: int) -> ManifestRow:
    try:
        row = ManifestRow(
            file=record["file"],
            label=int(record["label"]),
            seed=int(record["seed"]),
            index=int(record["index"]),
            generator_sha256=record["generator_sha256"],
        )
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"{where}, line {line}: malformed row {record} ({exc})") from exc
    if row.label not in CLASS_NAMES:
        raise DatasetError(f"{where}, line {line}: label must be 0 or 1, got {row.label}")
    if not row.file or Path(row.file).name != row.file:
        raise DatasetError(f"{where}, line {line}: file must be a name inside the folder, got {row.file!r}")
    return row


def _shard_row(record: dict[str, str], where: str, line: int) -> ShardRow:
    try:
        row = ShardRow(
            shard=record["shard"],
            sha256=record["sha256"],
            label=int(record["label"]),
            seed=int(record["seed"]),
            first_index=int(record["first_index"]),
            count=int(record["count"]),
            generator_sha256=record["generator_sha256"],
        )
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"{where}, line {line}: malformed row {record} ({exc})") from exc
    if row.label not in CLASS_NAMES:
        raise DatasetError(f"{where}, line {line}: label must be 0 or 1, got {row.label}")
    if not row.shard.endswith(SHARD_SUFFIX) or Path(row.shard).name != row.shard:
        raise DatasetError(
            f"{where}, line {line}: shard must be a {SHARD_SUFFIX} name inside the folder: {row.shard!r}"
        )
    if not _SHA256.fullmatch(row.sha256):
        raise DatasetError(f"{where}, line {line}: sha256 must be 64 lower-case hex digits, got {row.sha256!r}")
    if row.count < 1 or row.first_index < 0:
        raise DatasetError(f"{where}, line {line}: count must be >= 1 and first_index >= 0")
    return row


def read_layout(directory: str | Path) -> Manifest:
    """`directory`/manifest.csv, parsed; DatasetError naming the file for a missing or malformed one."""
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise DatasetError(f"no {MANIFEST_NAME} in {directory}: not a folder written by `pneumonia generate-synthetic`")
    return parse_manifest(path.read_text(encoding="utf-8"), str(path))


def read_manifest(directory: str | Path) -> list[ManifestRow]:
    """One row per image of `directory`, in either layout (the pool's size, labels, seeds and indices)."""
    return read_layout(directory).images


def manifest_bytes(rows: list[ManifestRow] | list[ShardRow]) -> bytes:
    """manifest.csv of image rows (PNG layout) or of shard rows (shard layout)."""
    columns = SHARD_MANIFEST_COLUMNS if rows and isinstance(rows[0], ShardRow) else MANIFEST_COLUMNS
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(astuple(row) for row in rows)
    return buffer.getvalue().encode()


def write_manifest(directory: str | Path, rows: list[ManifestRow] | list[ShardRow]) -> None:
    """Write `directory`/manifest.csv atomically (readers see the old or the new manifest, never half)."""
    atomic_write_bytes(Path(directory) / MANIFEST_NAME, manifest_bytes(rows))


# ---------------------------------------------------------------- reading the images


def load_synthetic(directory: str | Path) -> LabelledImages:
    """The synthetic folder as labelled images, in either layout; each image is its own "patient"
    (`{SYNTHETIC_PREFIX}{id}`, the same ids in both layouts). Shards are checked against their sha256."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DatasetError(f"synthetic image folder not found: {directory}")
    if not any(directory.iterdir()):
        raise DatasetError(f"synthetic image folder is empty: {directory}; run `pneumonia generate-synthetic`")
    manifest = read_layout(directory)
    if not manifest.images:
        raise DatasetError(f"{directory / MANIFEST_NAME} lists no images")
    if manifest.layout == "shards":
        return load_shards(directory, manifest.shards)
    paths = [directory / row.file for row in manifest.images]
    for path in paths:
        if not path.is_file():
            raise DatasetError(f"{directory / MANIFEST_NAME} lists {path.name}, which is missing from {directory}")
    return FileImages(
        paths, [f"{SYNTHETIC_PREFIX}{row.file}" for row in manifest.images], [row.label for row in manifest.images]
    )


def read_shard(directory: Path, row: ShardRow) -> np.ndarray:
    """The shard's images (uint8 N x H x W, or N x H x W x 3), verified against its manifest row: sha256
    (ShardIntegrityError), then ids, labels, seed and generator (DatasetError)."""
    path = directory / row.shard
    if not path.is_file():
        raise DatasetError(f"{directory / MANIFEST_NAME} lists {row.shard}, which is missing from {directory}")
    data = path.read_bytes()
    verify_sha256(data, row.sha256, str(path))
    shard = decode_shard(data, str(path))
    expected = [image.file for image in row.image_rows()]
    if shard.ids.tolist() != expected or set(shard.labels.tolist()) != {row.label}:
        raise DatasetError(f"{path}: holds other images than its manifest row ({expected[0]}..., label {row.label})")
    if (shard.seed, shard.generator_sha256) != (row.seed, row.generator_sha256):
        raise DatasetError(f"{path}: seed or generator differ from its manifest row")
    return shard.images


def as_grayscale(images: np.ndarray) -> np.ndarray:
    """uint8 N x H x W as load_grayscale decodes the same pixels from a PNG (RGB -> 'L' by PIL's luma)."""
    if images.ndim == 3:
        return images
    return np.stack([np.asarray(Image.fromarray(image).convert("L")) for image in images])


def load_shards(directory: Path, rows: list[ShardRow]) -> ArrayImages:
    """Every shard the manifest lists, read one after the other, as one in-memory set (uint8: N x H x W bytes,
    20 MB for 5,000 images of 64 px)."""
    arrays = [as_grayscale(read_shard(directory, row)) for row in rows]
    shapes = {array.shape[1:] for array in arrays}
    if len(shapes) > 1:
        raise DatasetError(f"{directory}: shards of different image sizes {sorted(shapes)}")
    images = [image for row in rows for image in row.image_rows()]
    return ArrayImages(
        np.concatenate(arrays), [f"{SYNTHETIC_PREFIX}{row.file}" for row in images], [row.label for row in images]
    )


# ---------------------------------------------------------------- converting and merging folders


def export_pngs(source: str | Path, destination: str | Path) -> list[ManifestRow]:
    """The PNG layout of a shard folder, for browsing: one PNG per image (the bytes `--layout png` writes) and a
    per-image manifest.csv in `destination`. The rows written."""
    source, destination = Path(source), Path(destination)
    manifest = read_layout(source)
    if manifest.layout != "shards":
        raise DatasetError(f"{source} already holds one PNG per image")
    destination.mkdir(parents=True, exist_ok=True)
    for row in manifest.shards:
        for image, image_row in zip(read_shard(source, row), row.image_rows(), strict=True):
            save_png(image, destination / image_row.file)
    write_manifest(destination, manifest.images)
    return manifest.images


def merge_synthetic_folders(folders: list[Path], destination: Path) -> list[ManifestRow]:
    """Copy the images of several synthetic folders (e.g. one per class) into `destination` with one manifest.csv
    of all of them; DatasetError for an image that two folders hold. Shard folders merge as shards (each checked
    against its sha256); if any folder holds PNG files, the result is PNG files. The image rows written."""
    destination.mkdir(parents=True, exist_ok=True)
    manifests = [(folder, read_layout(folder)) for folder in folders]
    seen: set[str] = set()
    for folder, manifest in manifests:
        for row in manifest.images:
            if row.file in seen:
                raise DatasetError(f"{row.file} is in more than one synthetic folder: cannot merge {folder}")
            seen.add(row.file)
    if all(manifest.layout == "shards" for _, manifest in manifests):
        shards: list[ShardRow] = []
        for folder, manifest in manifests:
            for row in manifest.shards:
                data = (folder / row.shard).read_bytes()
                verify_sha256(data, row.sha256, str(folder / row.shard))
                atomic_write_bytes(destination / row.shard, data)
                shards.append(row)
        shards.sort(key=lambda row: row.shard)
        write_manifest(destination, shards)
        return [image for row in shards for image in row.image_rows()]
    rows: list[ManifestRow] = []
    for folder, manifest in manifests:
        if manifest.layout == "shards":
            rows += export_pngs(folder, destination)
            continue
        for row in manifest.images:
            atomic_write_bytes(destination / row.file, (folder / row.file).read_bytes())
            rows.append(row)
    merged = sorted(rows, key=lambda row: row.file)
    write_manifest(destination, merged)
    return merged


__all__ = [
    "LAYOUTS",
    "MANIFEST_COLUMNS",
    "MANIFEST_NAME",
    "SHARD_MANIFEST_COLUMNS",
    "SYNTHETIC_PREFIX",
    "Layout",
    "Manifest",
    "ManifestRow",
    "ShardRow",
    "export_pngs",
    "load_shards",
    "load_synthetic",
    "manifest_bytes",
    "merge_synthetic_folders",
    "parse_manifest",
    "read_layout",
    "read_manifest",
    "read_shard",
    "write_manifest",
]
