"""Hold-out and k-fold splits: by patient, stratified, seeded; a source's own test split is the hold-out."""

from __future__ import annotations

import numpy as np
import pytest

from shared.datasets import ArrayImages, DatasetSplits
from shared.errors import ConfigError
from shared.splits import develop_and_holdout, holdout_indices, patient_kfold, patient_labels


def patients_with_several_images(num_patients: int = 200, positive_share: float = 0.3, seed: int = 0) -> ArrayImages:
    """Patients with 1-4 images each, all of one label; image i carries i in its first two pixels."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 5, num_patients)
    patient_label = (np.arange(num_patients) < round(positive_share * num_patients)).astype(int)
    ids = np.repeat([f"p{i:03d}" for i in range(num_patients)], counts)
    labels = np.repeat(patient_label, counts)
    images = np.zeros((len(ids), 4, 4), np.uint8)
    images[:, 0, 0], images[:, 0, 1] = np.divmod(np.arange(len(ids)), 256)
    return ArrayImages(images, ids, labels)


def image_index(images: ArrayImages) -> np.ndarray:
    return images.images[:, 0, 0].astype(int) * 256 + images.images[:, 0, 1]


def test_patient_labels_positive_if_any_image_is() -> None:
    patients, labels = patient_labels(np.array(["b", "a", "b", "c"]), np.array([0, 1, 1, 0]))
    assert list(patients) == ["a", "b", "c"]
    assert list(labels) == [1, 1, 0]


def test_holdout_is_patient_level_and_stratified() -> None:
    data = patients_with_several_images()
    develop, holdout = holdout_indices(data.patient_ids, data.labels, fraction=0.2, seed=1)

    assert sorted(np.concatenate([develop, holdout])) == list(range(len(data)))  # every image, once
    assert not set(data.patient_ids[develop]) & set(data.patient_ids[holdout])
    held_patients, held_labels = patient_labels(data.patient_ids[holdout], data.labels[holdout])
    assert len(held_patients) == 40  # 20% of 200 patients
    assert held_labels.sum() == 12  # 20% of the 60 positive patients: the class ratio is kept


def test_holdout_seeded() -> None:
    data = patients_with_several_images()
    first = holdout_indices(data.patient_ids, data.labels, seed=3)[1]
    again = holdout_indices(data.patient_ids, data.labels, seed=3)[1]
    other = holdout_indices(data.patient_ids, data.labels, seed=4)[1]
    np.testing.assert_array_equal(first, again)
    assert set(first) != set(other)


@pytest.mark.parametrize("fraction", [0.0, 1.0, 1.5])
def test_holdout_fraction_must_be_a_share(fraction: float) -> None:
    data = patients_with_several_images(20)
    with pytest.raises(ConfigError, match="fraction"):
        holdout_indices(data.patient_ids, data.labels, fraction=fraction)


def test_holdout_refuses_a_class_too_small_to_split() -> None:
    ids, labels = np.array(["a", "b", "c", "d", "e"]), np.array([0, 0, 0, 0, 1])
    with pytest.raises(ConfigError, match="too few patients"):
        holdout_indices(ids, labels, fraction=0.2)


def test_develop_and_holdout_carves_from_labelled_without_official_test() -> None:
    data = patients_with_several_images()
    develop, holdout = develop_and_holdout(DatasetSplits("toy", labelled=data), fraction=0.25, seed=0)

    assert len(develop) + len(holdout) == len(data)
    assert not set(develop.patient_ids) & set(holdout.patient_ids)
    assert sorted(np.concatenate([image_index(develop), image_index(holdout)])) == list(range(len(data)))
    for part in (develop, holdout):  # each image keeps its own id and label
        np.testing.assert_array_equal(part.patient_ids, data.patient_ids[image_index(part)])
        np.testing.assert_array_equal(part.labels, data.labels[image_index(part)])


def test_official_test_is_the_holdout() -> None:
    data = patients_with_several_images(50)
    official = patients_with_several_images(10, seed=1)
    develop, holdout = develop_and_holdout(DatasetSplits("toy", labelled=data, official_test=official))
    assert develop is data
    assert holdout is official


def test_empty_official_test_falls_back_to_carving() -> None:
    data = patients_with_several_images(50)
    empty = data.subset([])
    develop, holdout = develop_and_holdout(DatasetSplits("toy", labelled=data, official_test=empty))
    assert len(holdout) > 0
    assert len(develop) + len(holdout) == len(data)


def test_kfold_disjoint_covering_patient_level_stratified() -> None:
    data = patients_with_several_images(200)
    folds = patient_kfold(data.patient_ids, data.labels, k=5, seed=0)

    assert len(folds) == 5
    validation = np.concatenate([val for _, val in folds])
    assert sorted(validation) == list(range(len(data)))  # each image validated exactly once
    for train, val in folds:
        assert sorted(np.concatenate([train, val])) == list(range(len(data)))
        assert not set(data.patient_ids[train]) & set(data.patient_ids[val])
        assert abs(data.labels[val].mean() - data.labels.mean()) < 0.1


def test_kfold_seeded_and_needs_two_folds() -> None:
    data = patients_with_several_images(100)
    first = patient_kfold(data.patient_ids, data.labels, k=4, seed=0)
    again = patient_kfold(data.patient_ids, data.labels, k=4, seed=0)
    other = patient_kfold(data.patient_ids, data.labels, k=4, seed=1)
    for (_, a), (_, b) in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(set(a) != set(b) for (_, a), (_, b) in zip(first, other, strict=True))
    with pytest.raises(ConfigError, match="k >= 2"):
        patient_kfold(data.patient_ids, data.labels, k=1)
