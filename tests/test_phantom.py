"""The phantom generator: RSNA layout, seeded, opacities where its boxes say, and a learnable, non-trivial task."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import rankdata
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from shared.datasets import PNEUMONIA, load_dataset
from shared.datasets.phantom import draw_chest, write_phantom_dataset
from shared.errors import ConfigError
from shared.splits import patient_kfold


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """600 patients at 32 px: enough for a linear model to find the opacities."""
    return write_phantom_dataset(tmp_path_factory.mktemp("phantom"), num_patients=600, image_size=32, seed=0)


def test_layout_and_labels(phantom: Path) -> None:
    splits = load_dataset("phantom", phantom)
    assert splits.name == "phantom"
    assert len(splits.labelled) == 600
    assert splits.labelled.class_counts() == {"normal": 360, "pneumonia": 240}  # positive_fraction 0.4
    assert splits.labelled.load(0).size == (32, 32)
    assert len(splits.unlabelled) == 20
    assert splits.official_test is None

    table = pd.read_csv(phantom / "stage2_train_metadata.csv")
    assert list(table.columns) == ["patientId", "x", "y", "width", "height", "Target", "class"]
    positives, negatives = table[table.Target == 1], table[table.Target == 0]
    assert set(positives["class"]) == {"Lung Opacity"}
    assert set(negatives["class"]) == {"Normal", "No Lung Opacity / Not Normal"}
    assert negatives[["x", "y", "width", "height"]].isna().all().all()
    assert not negatives.patientId.duplicated().any()
    boxes_per_patient = positives.groupby("patientId").size()
    assert set(boxes_per_patient) == {1, 2, 3}
    assert (positives.width > 0).all() and (positives.height > 0).all()
    assert (positives.x + positives.width <= 32).all() and (positives.y + positives.height <= 32).all()

    test_table = pd.read_csv(phantom / "stage2_test_metadata.csv")
    assert list(test_table.columns) == ["patientId", "PredictionString"]
    assert [phantom / "Test" / "Images" / f"{pid}.png" for pid in test_table.patientId] == splits.unlabelled


@pytest.mark.parametrize("seed", range(5))
def test_opacities_lie_in_their_boxes(seed: int) -> None:
    """A film with opacities differs from its opacity-free twin (same anatomy) by brightening inside the boxes."""
    size = 48
    clear, no_boxes = draw_chest(np.random.default_rng(seed), size, num_opacities=0, enlarged_heart=False)
    cloudy, boxes = draw_chest(np.random.default_rng(seed), size, num_opacities=3, enlarged_heart=False)
    assert no_boxes == []
    assert len(boxes) == 3

    difference = cloudy.astype(int) - clear.astype(int)
    in_boxes = np.zeros((size, size), bool)
    for box in boxes:
        assert 0 <= box["x"] < box["x"] + box["width"] <= size
        assert 0 <= box["y"] < box["y"] + box["height"] <= size
        in_boxes[box["y"] : box["y"] + box["height"], box["x"] : box["x"] + box["width"]] = True
    assert difference.min() >= -1  # opacities only add density (+-1 from rounding)
    assert difference.max() >= 8
    assert np.abs(difference[in_boxes]).sum() >= 0.85 * np.abs(difference).sum()


def test_same_seed_same_bytes_other_seed_other_images(tmp_path: Path) -> None:
    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    first = files(write_phantom_dataset(tmp_path / "a", num_patients=30, image_size=16, num_test=3, seed=7))
    again = files(write_phantom_dataset(tmp_path / "b", num_patients=30, image_size=16, num_test=3, seed=7))
    other = files(write_phantom_dataset(tmp_path / "c", num_patients=30, image_size=16, num_test=3, seed=8))
    assert len(first) == 30 + 3 + 2
    assert first == again
    assert first.keys() == other.keys()
    images = [name for name in first if name.endswith(".png")]
    assert len(images) == 33
    assert all(first[name] != other[name] for name in images)


def test_learnable_but_not_trivial(phantom: Path) -> None:
    """A linear model on 16 x 16 pixels, 5-fold patient-level cross-validated, finds pneumonia well above chance,
    short of perfect; no single pixel or overall brightness gives it away."""
    images = load_dataset("phantom", phantom).labelled
    pixels = np.stack([np.asarray(images.load(i), dtype=float) for i in range(len(images))]) / 255
    small = np.stack([np.asarray(images.load(i).resize((16, 16)), dtype=float) for i in range(len(images))]) / 255
    features, labels = small.reshape(len(images), -1), images.labels

    aurocs = []
    for train, val in patient_kfold(images.patient_ids, labels, k=5, seed=0):
        model = LogisticRegression(C=1.0, max_iter=3000).fit(features[train], labels[train])
        aurocs.append(roc_auc_score(labels[val], model.predict_proba(features[val])[:, 1]))
    assert 0.8 < np.mean(aurocs) < 0.97

    # AUROC of each pixel as a score: (mean rank of positives - its minimum) / number of negatives
    ranks = rankdata(pixels.reshape(len(images), -1), axis=0)
    positives = labels == PNEUMONIA
    pixel_auroc = (ranks[positives].mean(axis=0) - (positives.sum() + 1) / 2) / (~positives).sum()
    assert np.abs(pixel_auroc - 0.5).max() < 0.35
    assert abs(roc_auc_score(labels, pixels.mean(axis=(1, 2))) - 0.5) < 0.15


def test_labels_balance_follows_positive_fraction(tmp_path: Path) -> None:
    splits = load_dataset(
        "phantom", write_phantom_dataset(tmp_path, num_patients=20, image_size=16, positive_fraction=0.25, num_test=0)
    )
    assert (splits.labelled.labels == PNEUMONIA).sum() == 5
    assert splits.unlabelled == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"image_size": 8}, "image size must be at least 16"),
        ({"num_patients": 1}, "leave a class empty"),
        ({"positive_fraction": 0.0}, "leave a class empty"),
        ({"positive_fraction": 1.0}, "leave a class empty"),
        ({"num_test": -1}, "test images must be >= 0"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        write_phantom_dataset(tmp_path / "out", **{"num_patients": 10, **kwargs})
    assert not (tmp_path / "out").exists()
