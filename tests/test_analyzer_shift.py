"""The estimate under shift in the analysis (services.analyzer.shift_tests): per strategy the clean hold-out beside
MedMNIST-C's shifts, and a paired robustness test that finds a real difference and not a null one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.analyzer.shift_tests import compare_under_shift, load_shifted, render_shift
from shared import layout
from shared.corruptions import CORRUPTIONS
from shared.metrics import specificity_at_sensitivity
from shared.predictions import (
    ENSEMBLE,
    read_holdout_predictions,
    write_holdout_predictions,
    write_shifted_predictions,
)

N = 400
SHIFTS = [f"{name}@3" for name in list(CORRUPTIONS)[:4]]


def scores(labels: np.ndarray, separation: float, seed: int) -> np.ndarray:
    """Calibrated-looking probabilities whose classes are `separation` standard deviations apart."""
    rng = np.random.default_rng(seed)
    return 1 / (1 + np.exp(-(rng.normal(size=len(labels)) + separation * (labels - 0.5))))


def write_strategy(folder: Path, strategy: str, clean: float, shifted: float, seed: int) -> None:
    """Two fold models per strategy; under every shift their classes are `shifted` apart, `clean` on the hold-out."""
    labels = (np.arange(N) % 3 != 0).astype(int)  # two thirds pneumonia
    images = [f"p{i}" for i in range(N)]
    write_holdout_predictions(
        folder / layout.holdout_predictions_name(strategy),
        images,
        labels,
        [(fold, scores(labels, clean, seed + fold), 0.5) for fold in (1, 2)],
    )
    refused = [0] * (N - 8) + [1] * 8
    shifts = {
        shift: [(fold, scores(labels, shifted, seed + 10 * k + fold), 0.5, refused) for fold in (1, 2)]
        for k, shift in enumerate(SHIFTS)
    }
    write_shifted_predictions(folder / layout.shifted_predictions_name(strategy), images, labels, shifts)


@pytest.fixture
def metrics_dir(tmp_path: Path) -> Path:
    write_strategy(tmp_path, "baseline", clean=4.0, shifted=1.0, seed=0)
    write_strategy(tmp_path, "augmented", clean=4.0, shifted=3.0, seed=100)  # much more robust
    write_strategy(tmp_path, "curriculum", clean=4.0, shifted=1.0, seed=200)  # as robust as baseline
    return tmp_path


def section_of(metrics_dir: Path) -> dict:
    strategies = ("baseline", "augmented", "curriculum")
    skipped: list[str] = []
    shifted = load_shifted(metrics_dir, strategies, skipped)
    holdout = {s: read_holdout_predictions(metrics_dir / layout.holdout_predictions_name(s)) for s in strategies}
    finals = {"baseline": {"shifted": {"holdout": {"refused": 0.004}}}, "augmented": None, "curriculum": {}}
    return compare_under_shift(shifted, holdout, finals, ("augmented", "curriculum"), ("baseline",), n_resamples=400)


def test_a_real_robustness_difference_is_found_and_a_null_one_is_not(metrics_dir: Path) -> None:
    section = section_of(metrics_dir)
    by_candidate = {c["strategy"]: c["tests"] for c in section["comparisons"]}
    better = by_candidate["augmented"]["auroc"]
    assert better["difference"] > 0.05 and better["ci95"][0] > 0 and better["p_holm"] < 0.05
    assert better["mde"] is not None and better["mde"] < better["difference"]
    same = by_candidate["curriculum"]["auroc"]
    assert same["ci95"][0] < 0 < same["ci95"][1] and same["p_holm"] > 0.05
    assert by_candidate["augmented"]["specificity_at_sensitivity"]["difference"] > 0


def test_each_strategy_shows_the_clean_hold_out_beside_every_shift(metrics_dir: Path) -> None:
    section = section_of(metrics_dir)
    baseline = section["strategies"]["baseline"]
    assert set(baseline["per_shift"]) == set(SHIFTS) and section["shifts"] == SHIFTS
    assert baseline["holdout"]["auroc"] > baseline["mean"]["auroc"] + 0.05  # the shift costs what it was built to
    assert baseline["per_shift"][SHIFTS[0]]["refused"] == pytest.approx(8 / N)
    assert baseline["holdout"]["refused"] == 0.004  # the clean hold-out's refusals: the trainer's numbers
    assert section["strategies"]["augmented"]["holdout"]["refused"] is None  # a final metrics file without them
    assert set(baseline["families"]) == {f"{CORRUPTIONS[s.partition('@')[0]].family}@3" for s in SHIFTS}
    # the common operating point is read off each set's own ROC curve
    shifted = load_shifted(metrics_dir, ("baseline",), [])["baseline"].per_shift[SHIFTS[1]]
    assert baseline["per_shift"][SHIFTS[1]]["specificity_at_sensitivity"] == specificity_at_sensitivity(
        shifted.labels, shifted.probability[ENSEMBLE], 0.95
    )
    text = "\n".join(render_shift(section))
    assert "hold-out (clean)" in text and "augmented vs baseline" in text and "differs" in text
    assert "no detectable difference" in text and "detectable:" in text


def test_without_shifted_predictions_the_section_says_so(tmp_path: Path) -> None:
    skipped: list[str] = []
    assert load_shifted(tmp_path, ("baseline",), skipped) == {}
    assert compare_under_shift({}, {}, {}, ("augmented",), ("baseline",)) is None
    assert skipped and "estimate under shift" in skipped[0]
    assert "not scored" in "\n".join(render_shift(None))
