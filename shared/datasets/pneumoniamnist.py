"""PneumoniaMNIST (MedMNIST v2): pediatric chest X-rays as uint8 arrays in one npz file.

The file holds `{split}_images` (N x H x W uint8) and `{split}_labels` (N x 1; 0 normal, 1 pneumonia) for any
non-empty subset of the splits train, val and test. Train and val are the labelled development data; test, when
present, is the official hold-out. A file with the test split only (what many MedMNIST users have) has no development
data: it can be evaluated on (`pneumonia evaluate --split test`), not trained on.

MedMNIST publishes no patient ids, so every image gets its own id ("train-00012"): splits are then per image,
and two images of one patient may fall on both sides of a split. This is a known limitation of the source.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from shared.datasets.base import ArrayImages, DatasetSplits
from shared.errors import DatasetError

FILENAME = "pneumoniamnist.npz"
LABELLED_SPLITS = ("train", "val")
TEST_SPLIT = "test"


def load_pneumoniamnist(path: Path) -> DatasetSplits:
    """Read `path` (the npz file, or a directory holding pneumoniamnist.npz) and check every array."""
    npz_path = path / FILENAME if path.is_dir() else path
    if not npz_path.is_file():
        raise DatasetError(
            f"PneumoniaMNIST file not found: {npz_path}; run `pneumonia download-dataset --dataset pneumoniamnist "
            f"--data-dir {path if path.is_dir() else path.parent}` (add --source FILE to copy a local npz)"
        )
    splits = read_splits(npz_path)

    if not splits:
        names = " or ".join(f"{split}_images" for split in (*LABELLED_SPLITS, TEST_SPLIT))
        raise DatasetError(f"{npz_path} holds no labelled split ({names})")
    sizes = {splits[split][0].shape[1:] for split in splits}
    if len(sizes) > 1:
        raise DatasetError(f"{npz_path}: splits differ in image size {sorted(sizes)}")

    labelled = [split for split in LABELLED_SPLITS if split in splits]
    (size,) = sizes
    return DatasetSplits(
        name="pneumoniamnist",
        labelled=ArrayImages(  # empty for a test-only file
            np.concatenate([splits[split][0] for split in labelled] or [np.empty((0, *size), np.uint8)]),
            [pid for split in labelled for pid in image_ids(split, len(splits[split][1]))],
            np.concatenate([splits[split][1] for split in labelled] or [np.empty(0, np.int64)]),
        ),
        official_test=(
            ArrayImages(splits[TEST_SPLIT][0], image_ids(TEST_SPLIT, len(splits[TEST_SPLIT][1])), splits[TEST_SPLIT][1])
            if TEST_SPLIT in splits
            else None
        ),
    )


def read_splits(npz_path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{split: (images N x H x W uint8, labels N int64)} for every split present in the file."""
    try:
        with open(npz_path, "rb") as fh:
            if fh.read(4) != b"PK\x03\x04":  # an npz is a zip archive
                raise DatasetError(f"{npz_path} is not an npz file (numpy.savez archive)")
        with np.load(npz_path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise DatasetError(f"{npz_path} is not a readable npz file ({exc})") from exc

    splits: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split in (*LABELLED_SPLITS, TEST_SPLIT):
        images, labels = arrays.get(f"{split}_images"), arrays.get(f"{split}_labels")
        if images is None and labels is None:
            continue
        if labels is None:
            raise DatasetError(f"{npz_path} has {split}_images but no {split}_labels")
        if images is None:
            raise DatasetError(f"{npz_path} has {split}_labels but no {split}_images")
        splits[split] = (check_images(images, npz_path, split), check_labels(labels, len(images), npz_path, split))
    return splits


def check_images(images: np.ndarray, npz_path: Path, split: str) -> np.ndarray:
    if images.dtype != np.uint8 or images.ndim != 3 or 0 in images.shape:
        raise DatasetError(
            f"{npz_path}: {split}_images must be a non-empty uint8 array N x H x W, got {images.dtype} {images.shape}"
        )
    return images


def check_labels(labels: np.ndarray, count: int, npz_path: Path, split: str) -> np.ndarray:
    if not np.issubdtype(labels.dtype, np.integer) or labels.shape not in ((count,), (count, 1)):
        raise DatasetError(
            f"{npz_path}: {split}_labels must be integers of shape ({count}, 1) to match {split}_images, "
            f"got {labels.dtype} {labels.shape}"
        )
    labels = labels.reshape(-1).astype(np.int64)
    if not np.isin(labels, (0, 1)).all():
        raise DatasetError(f"{npz_path}: {split}_labels must be 0 (normal) or 1 (pneumonia), got {np.unique(labels)}")
    return labels


def image_ids(split: str, count: int) -> list[str]:
    """One id per image ("train-00012"): MedMNIST has no patient ids."""
    return [f"{split}-{i:05d}" for i in range(count)]
