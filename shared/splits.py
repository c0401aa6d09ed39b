"""Patient-level, stratified, seeded splits: no patient ever appears on both sides of a split."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from shared.datasets.base import DatasetSplits, LabelledImages
from shared.errors import ConfigError, DatasetError

HOLDOUT_FRACTION = 0.2
SPLIT_SEED = 42


def patient_labels(patient_ids: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique patients and one label each (positive if any of the patient's images is positive)."""
    patients, inverse = np.unique(patient_ids, return_inverse=True)
    per_patient = np.zeros(len(patients), dtype=np.int64)
    np.maximum.at(per_patient, inverse, labels)
    return patients, per_patient


def holdout_indices(
    patient_ids: np.ndarray, labels: np.ndarray, fraction: float = HOLDOUT_FRACTION, seed: int = SPLIT_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """(develop, holdout) image indices; `fraction` of each class's patients go to the hold-out."""
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"hold-out fraction must be in (0, 1), got {fraction}")
    patients, per_patient = patient_labels(patient_ids, labels)
    rng = np.random.default_rng(seed)
    held: list[np.ndarray] = []
    for label in np.unique(per_patient):
        members = rng.permutation(patients[per_patient == label])
        n_held = int(round(fraction * len(members)))
        if n_held == 0 or n_held == len(members):
            raise ConfigError(
                f"cannot hold out {fraction:.0%} of {len(members)} patients of class {label}: too few patients"
            )
        held.append(members[:n_held])
    is_held = np.isin(patient_ids, np.concatenate(held))
    return np.flatnonzero(~is_held), np.flatnonzero(is_held)


def develop_and_holdout(
    splits: DatasetSplits, fraction: float = HOLDOUT_FRACTION, seed: int = SPLIT_SEED
) -> tuple[LabelledImages, LabelledImages]:
    """The development set (GAN training, CV) and the hold-out test set, fixed before anything else.

    A source's own labelled test split is the hold-out when it has one; otherwise a seeded patient-level
    stratified share of the labelled images is carved off. A source with a test split only has no development set:
    DatasetError.
    """
    if len(splits.labelled) == 0:
        test = "" if splits.official_test is None else f" (only a test split of {len(splits.official_test)} images)"
        raise DatasetError(
            f"{splits.name} has no labelled development images{test}: nothing to train, calibrate or hold out; "
            "a test split can only be scored (pneumonia evaluate --split test)"
        )
    if splits.official_test is not None and len(splits.official_test) > 0:
        return splits.labelled, splits.official_test
    develop, holdout = holdout_indices(splits.labelled.patient_ids, splits.labelled.labels, fraction, seed)
    return splits.labelled.subset(develop), splits.labelled.subset(holdout)


def patient_kfold(
    patient_ids: np.ndarray, labels: np.ndarray, k: int, seed: int = SPLIT_SEED
) -> list[tuple[np.ndarray, np.ndarray]]:
    """k stratified folds grouped by patient: a list of (train, validation) image indices."""
    if k < 2:
        raise ConfigError(f"k-fold cross-validation needs k >= 2, got {k}")
    folds = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return [(train, val) for train, val in folds.split(np.zeros(len(labels)), labels, groups=patient_ids)]
