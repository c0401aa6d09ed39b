"""--repeats in the analysis: every repeat's fold models in one ensemble for the image-by-image tests, and the
strategies paired by seed (per-seed hold-out differences, Nadeau-Bengio over the validation folds)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from services.analyzer.holdout_tests import compare_on_holdout, load_predictions
from services.analyzer.repeats import render_seed_paired, repeat_dirs, seed_paired_comparisons
from services.analyzer.report import CANDIDATES, REFERENCES
from shared import layout
from shared import stats as st
from shared.predictions import read_holdout_predictions, write_holdout_predictions

N_IMAGES, K = 300, 3
SEPARATION = {"baseline": 2.0, "augmented": 3.0}


def write_repeat(folder: Path, repeat: int, y: np.ndarray) -> None:
    """One repeat's prediction, final-metrics and CV-summary files for baseline and augmented."""
    rng = np.random.default_rng(100 + repeat)
    folder.mkdir(parents=True, exist_ok=True)
    images = [f"patient-{i:04d}" for i in range(N_IMAGES)]
    for strategy, separation in SEPARATION.items():
        folds = []
        for k in range(K):
            logit = separation * (y - 0.5) + rng.normal(size=len(y))
            folds.append((k + 1, 1 / (1 + np.exp(-logit)), 0.45 + 0.05 * k + 0.01 * repeat))
        write_holdout_predictions(folder / layout.holdout_predictions_name(strategy), images, y, folds)
        final = {
            "holdout_operating_point_per_fold": [{"fold": f, "threshold": t} for f, _, t in folds],
            "n_train_real": 200,
            "n_develop": 300,
        }
        (folder / layout.final_metrics_name(strategy)).write_text(json.dumps(final))
        cv = {
            "folds": [
                {
                    "fold": k + 1,
                    "auroc": 0.9 + 0.01 * separation + 0.001 * k * repeat,
                    "accuracy": 0.8 + 0.01 * separation * k,
                }
                for k in range(K)
            ]
        }
        (folder / layout.cv_summary_name(strategy)).write_text(json.dumps(cv))


@pytest.fixture
def metrics_dir(tmp_path: Path) -> Path:
    y = (np.random.default_rng(0).random(N_IMAGES) < 0.6).astype(int)
    for repeat in range(3):
        write_repeat(tmp_path if repeat == 0 else tmp_path / layout.repeat_dir_name(repeat), repeat, y)
    (tmp_path / "repeat-x").mkdir()  # not a repeat
    return tmp_path


def test_repeat_folders_are_found_in_order(metrics_dir: Path) -> None:
    assert repeat_dirs(metrics_dir) == {0: metrics_dir, 1: metrics_dir / "repeat-1", 2: metrics_dir / "repeat-2"}


def test_the_ensemble_holds_every_fold_model_of_every_repeat(metrics_dir: Path) -> None:
    skipped: list[str] = []
    by_repeat: dict = {}
    merged = load_predictions(metrics_dir, ("baseline", "augmented"), skipped, by_repeat)["baseline"]
    assert skipped == []
    assert len(merged.fold_models) == 3 * K
    assert merged.fold_models[:K] == ["fold_1", "fold_2", "fold_3"] and "repeat_2_fold_3" in merged.fold_models
    files = [metrics_dir, metrics_dir / "repeat-1", metrics_dir / "repeat-2"]
    every = [read_holdout_predictions(f / layout.holdout_predictions_name("baseline")) for f in files]
    expected = np.mean([p.probability[f"fold_{k + 1}"] for p in every for k in range(K)], axis=0)
    assert merged.probability["ensemble"] == pytest.approx(expected)
    thresholds = [0.45 + 0.05 * k + 0.01 * r for r in range(3) for k in range(K)]
    assert merged.decision["ensemble"].tolist() == (expected >= np.mean(thresholds)).astype(int).tolist()
    assert sorted(by_repeat["baseline"]) == [0, 1, 2]
    section = compare_on_holdout(
        {"baseline": merged, **{"augmented": load_predictions(metrics_dir, ("augmented",), [])["augmented"]}},
        CANDIDATES,
        REFERENCES,
        [],
    )
    assert section is not None and section["strategies"]["baseline"]["fold_spread"]["auroc"]["n_models"] == 3 * K


def test_strategies_are_paired_by_seed(metrics_dir: Path) -> None:
    by_repeat: dict = {}
    load_predictions(metrics_dir, ("baseline", "augmented"), [], by_repeat)
    section = seed_paired_comparisons(metrics_dir, by_repeat, CANDIDATES, REFERENCES)
    assert section is not None and section["repeats"] == 3
    [comparison] = section["comparisons"]  # augmented vs baseline; no curriculum, no matched baseline here
    assert (comparison["strategy"], comparison["reference"]) == ("augmented", "baseline")
    auroc = comparison["metrics"]["auroc"]
    for r in range(3):
        ref, cand = by_repeat["baseline"][r], by_repeat["augmented"][r]
        direct = st.delong_test(ref.labels, ref.probability["ensemble"], cand.probability["ensemble"]).difference
        assert auroc["holdout_per_repeat"][r] == pytest.approx(direct)
    differences = [0.01 * (3.0 - 2.0) for _ in range(3 * K)]  # the CV files: +0.01 in every (seed, fold) pair
    nb = auroc["nadeau_bengio"]
    assert nb["n"] == 3 * K and nb["mean_difference"] == pytest.approx(np.mean(differences))
    assert (nb["n_train"], nb["n_test"]) == (200, 100)
    accuracy = comparison["metrics"]["accuracy"]["nadeau_bengio"]
    pairs = [0.01 * (3.0 - 2.0) * k for _ in range(3) for k in range(K)]
    expected = st.corrected_resampled_ttest(pairs, 200, 100)
    for key in ("n", "mean_difference", "t", "p"):
        assert accuracy[key] == pytest.approx(expected[key])
    assert accuracy["ci95"] == pytest.approx(expected["ci95"])
    text = "\n".join(render_seed_paired(section))
    assert "Repeats: 3 seeds" in text and "augmented vs baseline" in text and "corrected t-test" in text


def test_one_repeat_is_not_a_seed_pairing(tmp_path: Path) -> None:
    write_repeat(tmp_path, 0, (np.arange(N_IMAGES) % 2).astype(int))
    by_repeat: dict = {}
    single = load_predictions(tmp_path, ("baseline", "augmented"), [], by_repeat)
    assert single["baseline"].fold_models == ["fold_1", "fold_2", "fold_3"]
    assert seed_paired_comparisons(tmp_path, by_repeat, CANDIDATES, REFERENCES) is None
    assert render_seed_paired(None) == []
