"""The comparison repeated with several seeds (`pneumonia experiment --repeats R`, train-classifier --repeat r).

Repeat 0's files are in the metrics folder itself, repeat r's in its `repeat-<r>/` subfolder (shared.layout). Each
repeat trained every strategy with its own seed (folds, initialisation, sampling), the same for every strategy of
that repeat, so strategies are paired by seed. Two uses:

- The image-by-image tests (services.analyzer.holdout_tests) compare each strategy's ensemble of all its fold
  models of all repeats: `merge_repeats` turns the repeats' prediction files into one HoldoutPredictions whose
  ensemble is the mean calibrated probability of the R x k fold models at the mean of their thresholds.
- `seed_paired`: per comparison, each repeat's own ensemble difference on the hold-out, and Nadeau & Bengio's
  corrected resampled t-test over the R x k paired validation-fold differences (the folds' training sets overlap,
  so the plain t-test over them would be far too optimistic).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from shared import layout
from shared import stats as st
from shared.predictions import ENSEMBLE, HoldoutPredictions, ensemble, read_holdout_predictions

log = logging.getLogger(__name__)

SEED_PAIRED_METRICS = ("auroc", "accuracy")
_REPEAT_DIR = re.compile(rf"{re.escape(layout.REPEAT_DIR_PREFIX)}(\d+)")


def repeat_dirs(metrics_dir: Path) -> dict[int, Path]:
    """{repeat: folder}: 0 for `metrics_dir` itself, r for each repeat-<r>/ below it, in order."""
    found = {0: metrics_dir}
    if metrics_dir.is_dir():
        for child in metrics_dir.iterdir():
            match = _REPEAT_DIR.fullmatch(child.name)
            if child.is_dir() and match and int(match.group(1)) > 0:
                found[int(match.group(1))] = child
    return dict(sorted(found.items()))


def fold_thresholds(folder: Path, strategy: str) -> list[float] | None:
    """The thresholds of a strategy's fold models (its final metrics), in fold order; None when not recorded."""
    path = folder / layout.final_metrics_name(strategy)
    if not path.is_file():
        return None
    per_fold = json.loads(path.read_text()).get("holdout_operating_point_per_fold") or []
    return [float(entry["threshold"]) for entry in sorted(per_fold, key=lambda e: e["fold"])] or None


def load_repeats(metrics_dir: Path, strategy: str) -> dict[int, tuple[HoldoutPredictions, list[float] | None]]:
    """{repeat: (predictions, fold thresholds)} of every repeat that holds the strategy's predictions file."""
    found = {}
    for repeat, folder in repeat_dirs(metrics_dir).items():
        path = folder / layout.holdout_predictions_name(strategy)
        if path.is_file():
            found[repeat] = (read_holdout_predictions(path), fold_thresholds(folder, strategy))
    return found


def merge_repeats(repeats: dict[int, tuple[HoldoutPredictions, list[float] | None]]) -> HoldoutPredictions:
    """One strategy's repeats as one set of fold models ("fold_k" of repeat 0, "repeat_<r>_fold_k" of repeat r) and
    their ensemble over all of them. A single repeat is returned unchanged. ValueError when the repeats' hold-out
    images differ or a threshold is missing."""
    if len(repeats) == 1:
        return next(iter(repeats.values()))[0]
    first = next(iter(repeats.values()))[0]
    probability: dict[str, np.ndarray] = {}
    decision: dict[str, np.ndarray] = {}
    thresholds: list[float] = []
    for repeat, (found, folds) in repeats.items():
        if not (np.array_equal(found.images, first.images) and np.array_equal(found.labels, first.labels)):
            raise ValueError(f"repeat {repeat}'s hold-out images differ from repeat {next(iter(repeats))}'s")
        if folds is None or len(folds) != len(found.fold_models):
            raise ValueError(f"repeat {repeat}: its fold models' thresholds are not recorded")
        prefix = "" if repeat == 0 else f"repeat_{repeat}_"
        for name in found.fold_models:
            probability[prefix + name] = found.probability[name]
            decision[prefix + name] = found.decision[name]
        thresholds += folds
    probability[ENSEMBLE], decision[ENSEMBLE], _ = ensemble(list(probability.values()), thresholds)
    return HoldoutPredictions(first.images, first.labels, probability, decision)


def _validation_folds(folder: Path, strategy: str) -> dict[int, dict[str, Any]]:
    path = folder / layout.cv_summary_name(strategy)
    if not path.is_file():
        return {}
    return {int(fold["fold"]): fold for fold in json.loads(path.read_text()).get("folds", [])}


def _train_test_sizes(folder: Path, strategy: str) -> tuple[int, int] | None:
    path = folder / layout.final_metrics_name(strategy)
    if not path.is_file():
        return None
    final = json.loads(path.read_text())
    n_train, n_develop = final.get("n_train_real"), final.get("n_develop")
    return (int(n_train), int(n_develop) - int(n_train)) if n_train and n_develop else None


def seed_paired(
    metrics_dir: Path, reference: str, candidate: str, by_repeat: dict[str, dict[int, HoldoutPredictions]]
) -> dict[str, Any] | None:
    """candidate - reference paired by seed: each repeat's ensemble difference on the hold-out, and the corrected
    resampled t-test over every (repeat, fold) validation difference. None with fewer than two repeats of both."""
    repeats = sorted(set(by_repeat.get(reference, {})) & set(by_repeat.get(candidate, {})))
    if len(repeats) < 2:
        return None
    dirs = repeat_dirs(metrics_dir)
    result: dict[str, Any] = {"repeats": len(repeats), "metrics": {}}
    for metric in SEED_PAIRED_METRICS:
        holdout = []
        for r in repeats:
            ref, cand = by_repeat[reference][r], by_repeat[candidate][r]
            ref_m = st.holdout_metrics(ref.labels, ref.probability[ENSEMBLE], ref.decision[ENSEMBLE])
            cand_m = st.holdout_metrics(cand.labels, cand.probability[ENSEMBLE], cand.decision[ENSEMBLE])
            holdout.append(cand_m[metric] - ref_m[metric])
        validation, sizes = [], None
        for r in repeats:
            ref_folds = _validation_folds(dirs[r], reference)
            cand_folds = _validation_folds(dirs[r], candidate)
            for fold in sorted(set(ref_folds) & set(cand_folds)):
                ref_value, cand_value = ref_folds[fold].get(metric), cand_folds[fold].get(metric)
                if ref_value is not None and cand_value is not None:
                    validation.append(float(cand_value) - float(ref_value))
            sizes = sizes or _train_test_sizes(dirs[r], reference)
        entry: dict[str, Any] = {
            "holdout_per_repeat": holdout,
            "holdout_mean": float(np.mean(holdout)),
            "holdout_min": float(min(holdout)),
            "holdout_max": float(max(holdout)),
        }
        if sizes is not None and len(validation) >= 2:
            n_train, n_test = sizes
            entry["nadeau_bengio"] = {
                **st.corrected_resampled_ttest(validation, n_train, n_test),
                "n_train": n_train,
                "n_test": n_test,
                "on": "validation folds, paired by (seed, fold)",
            }
        result["metrics"][metric] = entry
    return result


def seed_paired_comparisons(
    metrics_dir: Path,
    by_repeat: dict[str, dict[int, HoldoutPredictions]],
    candidates: tuple[str, ...],
    references: tuple[str, ...],
) -> dict[str, Any] | None:
    """Every candidate against every reference, paired by seed; None without repeats."""
    comparisons = []
    for reference in references:
        for candidate in candidates:
            if candidate == reference:
                continue
            paired = seed_paired(metrics_dir, reference, candidate, by_repeat)
            if paired is not None:
                comparisons.append({"strategy": candidate, "reference": reference, **paired})
    if not comparisons:
        return None
    log.info("repeats: %d comparisons paired by seed over %d repeats", len(comparisons), comparisons[0]["repeats"])
    return {"repeats": comparisons[0]["repeats"], "comparisons": comparisons}


def render_seed_paired(section: dict[str, Any] | None) -> list[str]:
    """The report's lines on the repeats: each comparison's per-seed differences and the corrected t-test."""
    if not section:
        return []
    title = f"Repeats: {section['repeats']} seeds, strategies paired by seed"
    lines = [title, "-" * len(title)]
    lines.append(
        "The image-by-image tests above use every repeat's fold models (one ensemble per strategy). Below, each "
        "repeat's own ensemble difference on the hold-out, and Nadeau & Bengio's corrected resampled t-test over the "
        "paired validation-fold differences of all repeats (their training sets overlap)."
    )
    for comparison in section["comparisons"]:
        lines.append(f"{comparison['strategy']} vs {comparison['reference']}:")
        for metric, entry in comparison["metrics"].items():
            per_seed = ", ".join(f"{d:+.3f}" for d in entry["holdout_per_repeat"])
            text = f"  {metric:<9} hold-out per seed {per_seed} (mean {entry['holdout_mean']:+.3f})"
            nb = entry.get("nadeau_bengio")
            if nb and nb.get("p") is not None:
                low, high = nb["ci95"]
                text += (
                    f"; validation folds {nb['mean_difference']:+.3f} (95% CI [{low:+.3f}, {high:+.3f}], corrected "
                    f"t-test p = {nb['p']:.3g}, {nb['n']} seed x fold pairs)"
                )
            lines.append(text)
    return lines + [""]
