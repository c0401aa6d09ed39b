"""The one interface every dataset source returns: labelled images with patient ids, loaded lazily."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from shared.images import load_grayscale

NORMAL, PNEUMONIA = 0, 1
CLASS_NAMES = {NORMAL: "normal", PNEUMONIA: "pneumonia"}


class LabelledImages(ABC):
    """A labelled collection of grayscale images: `labels[i]` (0 normal, 1 pneumonia) for `patient_ids[i]`.

    One entry is one image. A patient may own several entries, so splits must group by `patient_ids`.
    """

    def __init__(self, patient_ids: Sequence[str], labels: Sequence[int]):
        self.patient_ids = np.asarray(patient_ids, dtype=str)
        self.labels = np.asarray(labels, dtype=np.int64)
        if len(self.patient_ids) != len(self.labels):
            raise ValueError("patient_ids and labels differ in length")

    def __len__(self) -> int:
        return len(self.labels)

    @abstractmethod
    def load(self, index: int) -> Image.Image:
        """The image at `index`, fully decoded, in mode 'L'."""

    @abstractmethod
    def subset(self, indices: Sequence[int] | np.ndarray) -> LabelledImages:
        """A view holding only the entries at `indices`, in that order."""

    def class_counts(self) -> dict[str, int]:
        return {name: int((self.labels == label).sum()) for label, name in CLASS_NAMES.items()}


class FileImages(LabelledImages):
    """Images stored as files (PNG, JPEG); decoding errors name the file."""

    def __init__(self, paths: Sequence[str | Path], patient_ids: Sequence[str], labels: Sequence[int]):
        super().__init__(patient_ids, labels)
        self.paths = [Path(p) for p in paths]
        if len(self.paths) != len(self.labels):
            raise ValueError("paths and labels differ in length")

    def load(self, index: int) -> Image.Image:
        return load_grayscale(self.paths[index])

    def subset(self, indices: Sequence[int] | np.ndarray) -> FileImages:
        idx = np.asarray(indices, dtype=np.int64)
        return FileImages([self.paths[i] for i in idx], self.patient_ids[idx], self.labels[idx])


class ArrayImages(LabelledImages):
    """Images held in memory as a uint8 array N x H x W (e.g. MedMNIST)."""

    def __init__(self, images: np.ndarray, patient_ids: Sequence[str], labels: Sequence[int]):
        super().__init__(patient_ids, labels)
        if images.ndim != 3 or images.dtype != np.uint8:
            raise ValueError(f"expected a uint8 array N x H x W, got {images.dtype} {images.shape}")
        self.images = images
        if len(self.images) != len(self.labels):
            raise ValueError("images and labels differ in length")

    def load(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[index], mode="L")

    def subset(self, indices: Sequence[int] | np.ndarray) -> ArrayImages:
        idx = np.asarray(indices, dtype=np.int64)
        return ArrayImages(self.images[idx], self.patient_ids[idx], self.labels[idx])


@dataclass
class DatasetSplits:
    """What a source provides.

    labelled: every labelled image available for training, validation and cross-validation (empty for a source
        that ships only a test split: it can be evaluated on, not trained on).
    official_test: a labelled test split shipped by the source; when present it is the hold-out test set.
    unlabelled: images without ground truth (e.g. RSNA stage-2 test). They are never used to report accuracy.
    """

    name: str
    labelled: LabelledImages
    official_test: LabelledImages | None = None
    unlabelled: list[Path] = field(default_factory=list)


class TorchImageDataset(torch.utils.data.Dataset):
    """Adapts LabelledImages to torch: item i is (transform(image), label)."""

    def __init__(self, images: LabelledImages, transform: Callable[[Image.Image], torch.Tensor]):
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images.load(index)), int(self.images.labels[index])
