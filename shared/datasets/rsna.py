"""RSNA Pneumonia Detection, as processed to PNG on Kaggle ("iamtapendu/rsna-pneumonia-processed-dataset").

Layout of `data_dir`:

    stage2_train_metadata.csv   patientId, class and/or Target (+ optional box columns x, y, width, height);
                                one row per box, so a patient with three opacities has three rows
    Training/Images/{patientId}.png
    stage2_test_metadata.csv    patientId, PredictionString: no ground truth
    Test/Images/*.png or Test/*.png

One patient is one image and one label: 1 (pneumonia) for class "Lung Opacity" (Target 1); 0 for "Normal"
and "No Lung Opacity / Not Normal" (Target 0). The test images have no labels and are never scored.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from shared.datasets.base import NORMAL, PNEUMONIA, DatasetSplits, FileImages
from shared.errors import DatasetError

TRAIN_CSV = "stage2_train_metadata.csv"
TRAIN_IMAGES = Path("Training") / "Images"
TEST_DIR = Path("Test")
CLASS_LABELS = {"Lung Opacity": PNEUMONIA, "Normal": NORMAL, "No Lung Opacity / Not Normal": NORMAL}


def load_rsna(data_dir: Path, name: str = "rsna") -> DatasetSplits:
    """Read the labelled training images and list the unlabelled test images; check every image exists."""
    hint = f"run `pneumonia download-dataset --dataset {name} --data-dir {data_dir}`"
    if not data_dir.is_dir():
        raise DatasetError(f"dataset directory not found: {data_dir}; {hint}")
    csv_path = data_dir / TRAIN_CSV
    if not csv_path.is_file():
        raise DatasetError(f"metadata file not found: {csv_path}; {hint}")

    patient_ids, labels = read_patient_labels(csv_path)
    for label, class_name in ((NORMAL, "normal"), (PNEUMONIA, "pneumonia")):
        if label not in labels:
            raise DatasetError(f"{csv_path} lists no {class_name} patient; a classifier needs both classes")

    images_dir = data_dir / TRAIN_IMAGES
    if not images_dir.is_dir():
        raise DatasetError(f"image directory not found: {images_dir}; {hint}")
    present = {entry.name for entry in os.scandir(images_dir)}
    missing = [pid for pid in patient_ids if f"{pid}.png" not in present]
    if missing:
        shown = ", ".join(str(images_dir / f"{pid}.png") for pid in missing[:3])
        raise DatasetError(f"{len(missing)} image(s) listed in {csv_path} are missing, e.g. {shown}; {hint}")

    labelled = FileImages([images_dir / f"{pid}.png" for pid in patient_ids], patient_ids, labels)
    return DatasetSplits(name=name, labelled=labelled, official_test=None, unlabelled=list_test_images(data_dir))


def read_patient_labels(csv_path: Path) -> tuple[list[str], list[int]]:
    """Patient ids in order of first appearance and one label each; rows that disagree are an error."""
    try:
        table = pd.read_csv(csv_path, dtype={"patientId": str, "class": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        raise DatasetError(f"cannot parse {csv_path}: {exc}") from exc
    if "patientId" not in table.columns or not {"Target", "class"} & set(table.columns):
        raise DatasetError(
            f"{csv_path} needs a 'patientId' column and a 'Target' or 'class' column; "
            f"found {', '.join(map(str, table.columns))}"
        )

    labels: dict[str, int] = {}  # insertion order = order of first appearance
    for row_number, row in enumerate(table.to_dict("records"), start=1):
        pid = row["patientId"]
        if pd.isna(pid) or not pid.strip():
            raise DatasetError(f"{csv_path} data row {row_number}: empty patientId")
        label = row_label(row, csv_path, row_number)
        if labels.setdefault(pid, label) != label:
            raise DatasetError(f"{csv_path}: rows of patient {pid} disagree on the label")
    return list(labels), list(labels.values())


def row_label(row: dict, csv_path: Path, row_number: int) -> int:
    """The label one CSV row gives, from `Target` and/or `class`; both given and disagreeing is an error."""
    where = f"{csv_path} data row {row_number} (patient {row['patientId']})"
    found: list[int] = []
    target = row.get("Target")
    if target is not None and not pd.isna(target):
        if target not in (0, 1):
            raise DatasetError(f"{where}: Target must be 0 or 1, got {target!r}")
        found.append(int(target))
    class_name = row.get("class")
    if class_name is not None and not pd.isna(class_name):
        if class_name not in CLASS_LABELS:
            raise DatasetError(f"{where}: unknown class {class_name!r}; expected one of {sorted(CLASS_LABELS)}")
        found.append(CLASS_LABELS[class_name])
    if not found:
        raise DatasetError(f"{where}: no label (Target and class are both empty)")
    if len(set(found)) > 1:
        raise DatasetError(f"{where}: Target {target!r} contradicts class {class_name!r}")
    return found[0]


def list_test_images(data_dir: Path) -> list[Path]:
    """The unlabelled test images, sorted: Test/Images/*.png, or Test/*.png when there is no Images folder."""
    test_dir = data_dir / TEST_DIR
    if (test_dir / "Images").is_dir():
        test_dir = test_dir / "Images"
    return sorted(test_dir.glob("*.png")) if test_dir.is_dir() else []
