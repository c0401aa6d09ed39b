"""The RSNA and PneumoniaMNIST readers: labels per patient, and a clear error naming the file for bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.datasets import NORMAL, PNEUMONIA, ArrayImages, FileImages, load_dataset
from shared.datasets.pneumoniamnist import load_pneumoniamnist
from shared.datasets.rsna import load_rsna
from shared.errors import DatasetError
from shared.splits import develop_and_holdout

HEADER = "patientId,x,y,width,height,Target,class\n"
ROWS = [  # patient b has two boxes: two rows, one image, one label
    "a,,,,,0,Normal",
    "b,1,1,3,3,1,Lung Opacity",
    "b,4,4,2,2,1,Lung Opacity",
    "c,,,,,0,No Lung Opacity / Not Normal",
    "d,2,2,4,4,1,Lung Opacity",
]


def write_rsna(root: Path, rows: list[str], header: str = HEADER, images: list[str] | None = None) -> Path:
    """An RSNA-layout directory with 8 x 8 PNGs for `images` (default: every patient in `rows`)."""
    (root / "Training" / "Images").mkdir(parents=True)
    (root / "stage2_train_metadata.csv").write_text(header + "\n".join(rows) + "\n")
    if images is None:
        images = sorted({row.split(",")[0] for row in rows})
    for index, pid in enumerate(images):
        Image.fromarray(np.full((8, 8), 10 * index, np.uint8)).save(root / "Training" / "Images" / f"{pid}.png")
    return root


def test_rsna_one_image_and_label_per_patient(tmp_path: Path) -> None:
    root = write_rsna(tmp_path / "rsna", ROWS)
    (root / "Test" / "Images").mkdir(parents=True)
    for pid in ("t2", "t1"):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "Test" / "Images" / f"{pid}.png")

    splits = load_rsna(root)

    assert splits.name == "rsna"
    assert isinstance(splits.labelled, FileImages)
    assert list(splits.labelled.patient_ids) == ["a", "b", "c", "d"]
    assert list(splits.labelled.labels) == [NORMAL, PNEUMONIA, NORMAL, PNEUMONIA]
    assert splits.labelled.paths[1] == root / "Training" / "Images" / "b.png"
    assert np.asarray(splits.labelled.load(2)).max() == 20  # c.png, written third
    assert splits.official_test is None
    assert splits.unlabelled == [root / "Test" / "Images" / "t1.png", root / "Test" / "Images" / "t2.png"]


def test_rsna_test_images_directly_in_test_folder(tmp_path: Path) -> None:
    root = write_rsna(tmp_path, ROWS)
    (root / "Test").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "Test" / "t.png")
    assert load_rsna(root).unlabelled == [root / "Test" / "t.png"]


@pytest.mark.parametrize(
    ("header", "rows"),
    [
        ("patientId,Target\n", ["a,0", "b,1", "b,1"]),
        ("patientId,class\n", ["a,No Lung Opacity / Not Normal", "b,Lung Opacity"]),
    ],
)
def test_rsna_label_from_either_column(tmp_path: Path, header: str, rows: list[str]) -> None:
    splits = load_rsna(write_rsna(tmp_path, rows, header=header))
    assert list(splits.labelled.patient_ids) == ["a", "b"]
    assert list(splits.labelled.labels) == [NORMAL, PNEUMONIA]


@pytest.mark.parametrize(
    ("header", "rows", "message"),
    [
        (HEADER, [*ROWS, "e,,,,,1,Normal"], "contradicts"),  # Target and class disagree
        (HEADER, [*ROWS, "d,,,,,0,Normal"], "patient d disagree"),  # two rows of one patient disagree
        ("patientId,Target\n", ["a,0", "b,2"], "Target must be 0 or 1"),
        ("patientId,class\n", ["a,Normal", "b,Pneumonia"], "unknown class"),
        ("patientId,x\n", ["a,1", "b,2"], "needs a 'patientId' column and a 'Target' or 'class'"),
        ("Target,class\n", ["0,Normal"], "needs a 'patientId'"),
        (HEADER, ["a,,,,,0,Normal", "c,,,,,0,No Lung Opacity / Not Normal"], "no pneumonia patient"),
        ("patientId,Target\n", ["b,1"], "no normal patient"),
        (HEADER, [*ROWS, "e,,,,,,"], "no label"),
    ],
)
def test_rsna_bad_metadata_names_the_csv(tmp_path: Path, header: str, rows: list[str], message: str) -> None:
    root = write_rsna(tmp_path, rows, header=header, images=["a", "b", "c", "d", "e"])
    with pytest.raises(DatasetError, match=message) as info:
        load_rsna(root)
    assert "stage2_train_metadata.csv" in str(info.value)


def test_rsna_missing_image_is_named_up_front(tmp_path: Path) -> None:
    root = write_rsna(tmp_path, ROWS, images=["a", "b", "d"])
    with pytest.raises(DatasetError, match=r"1 image\(s\).*c\.png.*download-dataset"):
        load_rsna(root)


@pytest.mark.parametrize("remove", ["dir", "csv", "images"])
def test_rsna_missing_files_point_to_download(tmp_path: Path, remove: str) -> None:
    root = write_rsna(tmp_path / "data", ROWS)
    if remove == "dir":
        root = tmp_path / "elsewhere"
    elif remove == "csv":
        (root / "stage2_train_metadata.csv").unlink()
    else:
        for png in (root / "Training" / "Images").iterdir():
            png.unlink()
        (root / "Training" / "Images").rmdir()
    with pytest.raises(DatasetError, match=f"{root}.*pneumonia download-dataset --dataset rsna"):
        load_rsna(root)


def test_rsna_corrupt_csv_and_corrupt_image(tmp_path: Path) -> None:
    root = write_rsna(tmp_path, ROWS)
    (root / "Training" / "Images" / "b.png").write_bytes(b"not a png")
    splits = load_rsna(root)  # decoding is lazy: the corrupt image fails when it is read, naming the file
    with pytest.raises(DatasetError, match="b.png"):
        splits.labelled.load(1)
    (root / "stage2_train_metadata.csv").write_bytes(b"")
    with pytest.raises(DatasetError, match="cannot parse .*stage2_train_metadata.csv"):
        load_rsna(root)


def test_load_dataset_dispatches_phantom_through_rsna_reader(tmp_path: Path) -> None:
    splits = load_dataset("phantom", write_rsna(tmp_path, ROWS))
    assert splits.name == "phantom"
    assert len(splits.labelled) == 4
    with pytest.raises(DatasetError, match="--dataset phantom"):
        load_dataset("phantom", tmp_path / "missing")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("chexpert", tmp_path)


# ---- PneumoniaMNIST ----


def medmnist_arrays(split: str, count: int, size: int = 28, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        f"{split}_images": rng.integers(0, 256, (count, size, size), dtype=np.uint8),
        f"{split}_labels": (np.arange(count) % 2).astype(np.uint8).reshape(count, 1),
    }


def test_pneumoniamnist_train_val_and_test(tmp_path: Path) -> None:
    arrays = {**medmnist_arrays("train", 6), **medmnist_arrays("val", 3, seed=1), **medmnist_arrays("test", 4)}
    np.savez(tmp_path / "pneumoniamnist.npz", **arrays)

    splits = load_dataset("pneumoniamnist", tmp_path)  # a directory holding pneumoniamnist.npz

    assert splits.name == "pneumoniamnist"
    assert isinstance(splits.labelled, ArrayImages)
    assert len(splits.labelled) == 9
    assert list(splits.labelled.patient_ids[[0, 5, 6, 8]]) == ["train-00000", "train-00005", "val-00000", "val-00002"]
    assert list(splits.labelled.labels) == [0, 1, 0, 1, 0, 1, 0, 1, 0]
    np.testing.assert_array_equal(np.asarray(splits.labelled.load(7)), arrays["val_images"][1])
    assert splits.official_test is not None
    assert list(splits.official_test.patient_ids) == ["test-00000", "test-00001", "test-00002", "test-00003"]
    np.testing.assert_array_equal(splits.official_test.images, arrays["test_images"])
    assert splits.unlabelled == []


@pytest.mark.parametrize("present", [("train",), ("val",), ("val", "test")])
def test_pneumoniamnist_any_subset_of_splits(tmp_path: Path, present: tuple[str, ...]) -> None:
    arrays = {key: value for split in present for key, value in medmnist_arrays(split, 4).items()}
    path = tmp_path / "subset.npz"
    np.savez(path, **arrays)  # the file itself may be named anything

    splits = load_pneumoniamnist(path)

    assert len(splits.labelled) == 4
    assert splits.labelled.patient_ids[0] == f"{present[0]}-00000"
    assert (splits.official_test is not None) == ("test" in present)


def test_pneumoniamnist_test_split_only(tmp_path: Path) -> None:
    """What many MedMNIST users have: a file with the official test split alone. It loads (to be scored); anything
    that needs development images says so."""
    arrays = medmnist_arrays("test", 4, size=16)
    np.savez(tmp_path / "test_only.npz", **arrays)

    splits = load_pneumoniamnist(tmp_path / "test_only.npz")

    assert len(splits.labelled) == 0 and splits.labelled.images.shape == (0, 16, 16)
    assert splits.official_test is not None and list(splits.official_test.labels) == [0, 1, 0, 1]
    np.testing.assert_array_equal(splits.official_test.images, arrays["test_images"])
    with pytest.raises(DatasetError, match="no labelled development images .only a test split of 4 images."):
        develop_and_holdout(splits)


def test_pneumoniamnist_flat_labels_accepted(tmp_path: Path) -> None:
    arrays = medmnist_arrays("train", 4)
    arrays["train_labels"] = arrays["train_labels"].reshape(-1).astype(np.int64)
    np.savez(tmp_path / "flat.npz", **arrays)
    assert list(load_pneumoniamnist(tmp_path / "flat.npz").labelled.labels) == [0, 1, 0, 1]


def bad_arrays(case: str) -> dict[str, np.ndarray]:
    arrays = {**medmnist_arrays("train", 4), **medmnist_arrays("test", 2)}
    if case == "images without labels":
        del arrays["train_labels"]
    elif case == "labels without images":
        del arrays["test_images"]
    elif case == "float images":
        arrays["train_images"] = arrays["train_images"].astype(np.float32)
    elif case == "rgb images":
        arrays["train_images"] = np.zeros((4, 28, 28, 3), np.uint8)
    elif case == "label count":
        arrays["train_labels"] = arrays["train_labels"][:3]
    elif case == "label values":
        arrays["train_labels"][2] = 2
    elif case == "float labels":
        arrays["train_labels"] = arrays["train_labels"].astype(np.float32)
    elif case == "no split":
        arrays = {"images": arrays["train_images"], "labels": arrays["train_labels"]}
    elif case == "sizes differ":
        arrays["test_images"] = np.zeros((2, 64, 64), np.uint8)
    return arrays


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("images without labels", "has train_images but no train_labels"),
        ("labels without images", "has test_labels but no test_images"),
        ("float images", "train_images must be a non-empty uint8 array"),
        ("rgb images", "train_images must be a non-empty uint8 array"),
        ("label count", r"train_labels must be integers of shape \(4, 1\)"),
        ("label values", "must be 0 .normal. or 1"),
        ("float labels", "train_labels must be integers"),
        ("no split", r"no labelled split \(train_images or val_images or test_images\)"),
        ("sizes differ", "differ in image size"),
    ],
)
def test_pneumoniamnist_bad_arrays_name_the_file(tmp_path: Path, case: str, message: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **bad_arrays(case))
    with pytest.raises(DatasetError, match=message) as info:
        load_pneumoniamnist(path)
    assert str(path) in str(info.value)


def test_pneumoniamnist_missing_or_not_npz(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=f"not found: {tmp_path / 'pneumoniamnist.npz'}.*download-dataset"):
        load_pneumoniamnist(tmp_path)
    for name, content in [("text.npz", b"hello"), ("truncated.npz", b"PK\x03\x04garbage")]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(DatasetError, match=f"{name} is not"):
            load_pneumoniamnist(tmp_path / name)
    np.save(tmp_path / "single.npy", np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(DatasetError, match="single.npy is not an npz"):
        load_pneumoniamnist(tmp_path / "single.npy")
