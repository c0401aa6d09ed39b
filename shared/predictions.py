"""Per-image hold-out predictions of a strategy's fold models: the file the classifier step writes
(`<strategy>_holdout_predictions.csv`, shared.layout) and the analysis reads, to compare strategies image by image.

One row per hold-out image, in the hold-out's order: `image` (its patient id), `label` (1 = pneumonia), then for each
fold model k `fold_k_probability` (its calibrated pneumonia probability) and `fold_k_decision` (1 when that
probability reaches the fold model's own calibrated threshold), and the fold-ensemble's `ensemble_probability` (the
mean of the fold models' calibrated probabilities) and `ensemble_decision` (at the mean of their thresholds).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.images import atomic_write_bytes
from shared.synthetic import SYNTHETIC_PREFIX

ENSEMBLE = "ensemble"


@dataclass
class HoldoutPredictions:
    """A strategy's per-image hold-out predictions: images (N,), labels (N,), and per model name ("fold_1", ...,
    "ensemble") its probabilities (N,) and decisions (N,)."""

    images: np.ndarray
    labels: np.ndarray
    probability: dict[str, np.ndarray]
    decision: dict[str, np.ndarray]

    @property
    def fold_models(self) -> list[str]:
        return [name for name in self.probability if name != ENSEMBLE]


def ensemble(probabilities: Sequence[np.ndarray], thresholds: Sequence[float]) -> tuple[np.ndarray, np.ndarray, float]:
    """(mean probability, decision, threshold) of the fold-ensemble: the mean calibrated probability against the
    mean of the fold models' thresholds."""
    probability = np.mean(np.vstack(probabilities), axis=0)
    threshold = float(np.mean(thresholds))
    return probability, (probability >= threshold).astype(np.int64), threshold


def write_holdout_predictions(
    path: str | Path,
    images: Sequence[str],
    labels: Sequence[int],
    folds: Sequence[tuple[int, Sequence[float], float]],
) -> HoldoutPredictions:
    """Write the file from the hold-out's patient ids and labels and, per fold model, (fold, calibrated
    probabilities in the hold-out's order, threshold). Refuses a synthetic image: the hold-out is real only."""
    found = _predictions(images, labels, folds)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    names = list(found.probability)
    writer.writerow(["image", "label", *(f"{n}_{kind}" for n in names for kind in ("probability", "decision"))])
    for i in range(len(found.labels)):
        cells = [cell for n in names for cell in (repr(float(found.probability[n][i])), int(found.decision[n][i]))]
        writer.writerow([found.images[i], int(found.labels[i]), *cells])
    atomic_write_bytes(path, buffer.getvalue().encode())
    return found


def _predictions(
    images: Sequence[str], labels: Sequence[int], folds: Sequence[tuple[int, Sequence[float], float]]
) -> HoldoutPredictions:
    """The fold models' probabilities and decisions at their thresholds, and the fold-ensemble's. Refuses a synthetic
    image: the hold-out is real only."""
    images = np.asarray(images, dtype=str)
    synthetic = [name for name in images if name.startswith(SYNTHETIC_PREFIX)]
    if synthetic:
        raise RuntimeError(f"{len(synthetic)} synthetic images among the hold-out predictions (e.g. {synthetic[0]})")
    labels = np.asarray(labels, dtype=np.int64)
    probability: dict[str, np.ndarray] = {}
    decision: dict[str, np.ndarray] = {}
    for fold, scores, threshold in sorted(folds, key=lambda f: f[0]):
        scores = np.asarray(scores, dtype=np.float64)
        if len(scores) != len(labels):
            raise ValueError(f"fold {fold}: {len(scores)} probabilities for {len(labels)} hold-out images")
        probability[f"fold_{fold}"] = scores
        decision[f"fold_{fold}"] = (scores >= threshold).astype(np.int64)
    thresholds = [threshold for _, _, threshold in folds]
    probability[ENSEMBLE], decision[ENSEMBLE], _ = ensemble(list(probability.values()), thresholds)
    return HoldoutPredictions(images, labels, probability, decision)


def read_holdout_predictions(path: str | Path) -> HoldoutPredictions:
    """The file as written by write_holdout_predictions; ValueError naming the file when a column is missing."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "label" not in rows[0] or "image" not in rows[0]:
        raise ValueError(f"{path}: not a hold-out predictions file (no image/label columns or no rows)")
    names = [column.removesuffix("_probability") for column in rows[0] if column.endswith("_probability")]
    for name in names:
        if f"{name}_decision" not in rows[0]:
            raise ValueError(f"{path}: {name}_probability has no {name}_decision column")
    return HoldoutPredictions(
        np.array([row["image"] for row in rows], dtype=str),
        np.array([int(row["label"]) for row in rows], dtype=np.int64),
        {n: np.array([float(row[f"{n}_probability"]) for row in rows]) for n in names},
        {n: np.array([int(row[f"{n}_decision"]) for row in rows], dtype=np.int64) for n in names},
    )


@dataclass
class ShiftedPredictions:
    """A strategy's per-image predictions on shifted copies of the hold-out (shared.corruptions): per shift name
    ('<corruption>@<severity>') its HoldoutPredictions (the fold models' and the fold-ensemble's calibrated
    probabilities and decisions) and, per fold model, whether its plausibility gate refused each image (1) — every
    image is a real radiograph, so a refusal is a false one."""

    per_shift: dict[str, HoldoutPredictions]
    refused: dict[str, dict[str, np.ndarray]]

    @property
    def shifts(self) -> list[str]:
        return list(self.per_shift)


def write_shifted_predictions(
    path: str | Path,
    images: Sequence[str],
    labels: Sequence[int],
    shifts: dict[str, Sequence[tuple[int, Sequence[float], float, Sequence[int]]]],
) -> ShiftedPredictions:
    """Write `<strategy>_shifted_predictions.csv`: one row per (shift, hold-out image), the columns of the hold-out
    predictions file after a `shift` column, and `fold_k_refused` per fold model. `shifts`: shift name -> per fold
    model (fold, calibrated probabilities in the hold-out's order, its threshold, its gate's refusals 0/1)."""
    per_shift: dict[str, HoldoutPredictions] = {}
    refused: dict[str, dict[str, np.ndarray]] = {}
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header: list[str] | None = None
    for shift, folds in shifts.items():
        folds = sorted(folds, key=lambda f: f[0])
        found = _predictions(images, labels, [(fold, scores, threshold) for fold, scores, threshold, _ in folds])
        refused[shift] = {f"fold_{fold}": np.asarray(flags, dtype=np.int64) for fold, _, _, flags in folds}
        per_shift[shift] = found
        names = list(found.probability)
        if header is None:
            header = ["shift", "image", "label"]
            header += [f"{n}_{kind}" for n in names for kind in ("probability", "decision")]
            header += [f"{n}_refused" for n in refused[shift]]
            writer.writerow(header)
        for i in range(len(found.labels)):
            cells = [cell for n in names for cell in (repr(float(found.probability[n][i])), int(found.decision[n][i]))]
            flags = [int(refused[shift][n][i]) for n in refused[shift]]
            writer.writerow([shift, found.images[i], int(found.labels[i]), *cells, *flags])
    atomic_write_bytes(path, buffer.getvalue().encode())
    return ShiftedPredictions(per_shift, refused)


def read_shifted_predictions(path: str | Path) -> ShiftedPredictions:
    """The file as written by write_shifted_predictions; ValueError naming the file when it is not one."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not {"shift", "image", "label"} <= set(rows[0]):
        raise ValueError(f"{path}: not a shifted predictions file (no shift/image/label columns or no rows)")
    names = [column.removesuffix("_probability") for column in rows[0] if column.endswith("_probability")]
    folds = [column.removesuffix("_refused") for column in rows[0] if column.endswith("_refused")]
    by_shift: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_shift.setdefault(row["shift"], []).append(row)
    per_shift, refused = {}, {}
    for shift, shift_rows in by_shift.items():
        per_shift[shift] = HoldoutPredictions(
            np.array([row["image"] for row in shift_rows], dtype=str),
            np.array([int(row["label"]) for row in shift_rows], dtype=np.int64),
            {n: np.array([float(row[f"{n}_probability"]) for row in shift_rows]) for n in names},
            {n: np.array([int(row[f"{n}_decision"]) for row in shift_rows], dtype=np.int64) for n in names},
        )
        refused[shift] = {n: np.array([int(row[f"{n}_refused"]) for row in shift_rows], dtype=np.int64) for n in folds}
    return ShiftedPredictions(per_shift, refused)
