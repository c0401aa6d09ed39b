"""Dataset sources behind one interface: `load_dataset(name, data_dir) -> DatasetSplits`."""

from __future__ import annotations

from pathlib import Path

from shared.datasets.base import (
    CLASS_NAMES,
    NORMAL,
    PNEUMONIA,
    ArrayImages,
    DatasetSplits,
    FileImages,
    LabelledImages,
    TorchImageDataset,
)

DATASETS = ("rsna", "pneumoniamnist", "phantom")

__all__ = [
    "CLASS_NAMES",
    "DATASETS",
    "NORMAL",
    "PNEUMONIA",
    "ArrayImages",
    "DatasetSplits",
    "FileImages",
    "LabelledImages",
    "TorchImageDataset",
    "load_dataset",
]


def load_dataset(name: str, data_dir: str | Path) -> DatasetSplits:
    """Read dataset `name` from `data_dir`; raise DatasetError naming the missing or bad file."""
    if name in ("rsna", "phantom"):  # phantom data is written in the RSNA layout
        from shared.datasets.rsna import load_rsna

        return load_rsna(Path(data_dir), name=name)
    if name == "pneumoniamnist":
        from shared.datasets.pneumoniamnist import load_pneumoniamnist

        return load_pneumoniamnist(Path(data_dir))
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
