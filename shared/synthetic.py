"""A folder of GAN-generated images: PNG files plus `manifest.csv`, the one record of what each file is.

manifest.csv columns: file (name inside the folder), label (0 normal, 1 pneumonia), seed and index (image i of
a run with that seed: its latent comes from the RNG seeded with (seed, index)), generator_sha256 (sha256 of the
generator checkpoint file). Only files listed in the manifest belong to the synthetic set.
"""

from __future__ import annotations

import csv
import io
from dataclasses import astuple, dataclass
from pathlib import Path

from shared.datasets.base import CLASS_NAMES, FileImages
from shared.errors import DatasetError
from shared.images import atomic_write_bytes

MANIFEST_NAME = "manifest.csv"
SYNTHETIC_PREFIX = "synthetic-"  # patient id prefix of every synthetic image: keeps them out of evaluation
MANIFEST_COLUMNS = ("file", "label", "seed", "index", "generator_sha256")


@dataclass(frozen=True)
class ManifestRow:
    """One synthetic image."""

    file: str
    label: int
    seed: int
    index: int
    generator_sha256: str


def read_manifest(directory: str | Path) -> list[ManifestRow]:
    """The rows of `directory`/manifest.csv; DatasetError naming the file for a missing or malformed one."""
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise DatasetError(f"no {MANIFEST_NAME} in {directory}: not a folder written by `pneumonia generate-synthetic`")
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if tuple(reader.fieldnames or ()) != MANIFEST_COLUMNS:
            raise DatasetError(f"{path}: expected columns {','.join(MANIFEST_COLUMNS)}, got {reader.fieldnames}")
        rows = []
        for line, record in enumerate(reader, start=2):
            try:
                row = ManifestRow(
                    file=record["file"],
                    label=int(record["label"]),
                    seed=int(record["seed"]),
                    index=int(record["index"]),
                    generator_sha256=record["generator_sha256"],
                )
            except (TypeError, ValueError) as exc:
                raise DatasetError(f"{path}, line {line}: malformed row {record} ({exc})") from exc
            if row.label not in CLASS_NAMES:
                raise DatasetError(f"{path}, line {line}: label must be 0 or 1, got {row.label}")
            if not row.file or Path(row.file).name != row.file:
                raise DatasetError(f"{path}, line {line}: file must be a name inside the folder, got {row.file!r}")
            rows.append(row)
    return rows


def write_manifest(directory: str | Path, rows: list[ManifestRow]) -> None:
    """Write `directory`/manifest.csv atomically (readers see the old or the new manifest, never half)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    writer.writerows(astuple(row) for row in rows)
    atomic_write_bytes(Path(directory) / MANIFEST_NAME, buffer.getvalue().encode())


def load_synthetic(directory: str | Path) -> FileImages:
    """The synthetic folder as labelled images; each file is its own "patient" (`{SYNTHETIC_PREFIX}{file}`)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DatasetError(f"synthetic image folder not found: {directory}")
    if not any(directory.iterdir()):
        raise DatasetError(f"synthetic image folder is empty: {directory}; run `pneumonia generate-synthetic`")
    rows = read_manifest(directory)
    if not rows:
        raise DatasetError(f"{directory / MANIFEST_NAME} lists no images")
    paths = [directory / row.file for row in rows]
    for path in paths:
        if not path.is_file():
            raise DatasetError(f"{directory / MANIFEST_NAME} lists {path.name}, which is missing from {directory}")
    return FileImages(paths, [f"{SYNTHETIC_PREFIX}{row.file}" for row in rows], [row.label for row in rows])


def merge_synthetic_folders(folders: list[Path], destination: Path) -> list[ManifestRow]:
    """Copy the images of several synthetic folders (e.g. one per class) into `destination` with one manifest.csv
    of all their rows; DatasetError for a file name that two folders hold. The rows written."""
    destination.mkdir(parents=True, exist_ok=True)
    rows: dict[str, ManifestRow] = {}
    for folder in folders:
        for row in read_manifest(folder):
            if row.file in rows:
                raise DatasetError(f"{row.file} is in more than one synthetic folder: cannot merge {folder}")
            rows[row.file] = row
            atomic_write_bytes(destination / row.file, (folder / row.file).read_bytes())
    merged = sorted(rows.values(), key=lambda row: row.file)
    write_manifest(destination, merged)
    return merged
