"""The verdict image by image: the per-image predictions file, DeLong / McNemar / bootstrap / MDE per comparison,
the matched-compute baseline when its file exists, the verdict's words, and the smoke-run first line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from statsmodels.stats.contingency_tables import mcnemar

from services.analyzer.holdout_tests import compare_on_holdout, load_predictions
from services.analyzer.report import (
    CANDIDATES,
    REFERENCES,
    STRATEGIES,
    StrategyResults,
    overall_verdict,
    render_report,
    smoke_run,
)
from shared import layout
from shared import stats as st
from shared.predictions import read_holdout_predictions, write_holdout_predictions

N_IMAGES = 400


def fold_probabilities(rng: np.random.Generator, y: np.ndarray, separation: float, k: int = 3) -> list[np.ndarray]:
    """k fold models' calibrated probabilities: a shared image difficulty plus each model's own noise."""
    difficulty = rng.normal(size=len(y))
    return [1 / (1 + np.exp(-(separation * (y - 0.5) + difficulty + 0.6 * rng.normal(size=len(y))))) for _ in range(k)]


def write_predictions(metrics_dir: Path, seed: int = 0, matched: bool = False) -> np.ndarray:
    """baseline and curriculum alike; augmented clearly better (higher separation). Returns the labels."""
    rng = np.random.default_rng(seed)
    y = (rng.random(N_IMAGES) < 0.7).astype(int)
    images = [f"patient-{i:04d}" for i in range(N_IMAGES)]
    separation = {"baseline": 2.0, "augmented": 4.5, "curriculum": 2.0}
    if matched:
        separation["baseline-matched"] = 2.0
    for strategy, sep in separation.items():
        folds = [(k + 1, p, 0.5 + 0.02 * k) for k, p in enumerate(fold_probabilities(rng, y, sep))]
        write_holdout_predictions(metrics_dir / layout.holdout_predictions_name(strategy), images, y, folds)
    return y


def test_predictions_file_round_trip_ensemble_and_decisions(tmp_path: Path) -> None:
    y = np.array([1, 0, 1, 0])
    folds = [(2, [0.9, 0.2, 0.55, 0.7], 0.6), (1, [0.7, 0.4, 0.45, 0.1], 0.4)]
    path = tmp_path / "baseline_holdout_predictions.csv"
    written = write_holdout_predictions(path, ["a", "b", "c", "d"], y, folds)
    found = read_holdout_predictions(path)
    assert found.fold_models == ["fold_1", "fold_2"]  # in fold order
    assert found.images.tolist() == ["a", "b", "c", "d"] and found.labels.tolist() == [1, 0, 1, 0]
    assert found.decision["fold_1"].tolist() == [1, 1, 1, 0]  # >= 0.4
    assert found.decision["fold_2"].tolist() == [1, 0, 0, 1]  # >= 0.6
    assert found.probability["ensemble"] == pytest.approx([0.8, 0.3, 0.5, 0.4])
    assert found.decision["ensemble"].tolist() == [1, 0, 1, 0]  # mean probability >= mean threshold 0.5
    for name in written.probability:
        assert found.probability[name].tolist() == written.probability[name].tolist()  # full precision
    header = path.read_text().splitlines()[0]
    assert header == (
        "image,label,fold_1_probability,fold_1_decision,fold_2_probability,fold_2_decision,"
        "ensemble_probability,ensemble_decision"
    )


def test_predictions_file_refuses_synthetic_images(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="synthetic images among the hold-out"):
        write_holdout_predictions(tmp_path / "x.csv", ["p1", "synthetic-000001"], [1, 0], [(1, [0.9, 0.1], 0.5)])
    assert not (tmp_path / "x.csv").exists()


def test_each_strategy_against_the_baseline_image_by_image(tmp_path: Path) -> None:
    y = write_predictions(tmp_path)
    skipped: list[str] = []
    predictions = load_predictions(tmp_path, STRATEGIES, skipped)  # STRATEGIES holds baseline-matched
    assert skipped == [f"image-by-image tests: {tmp_path / 'baseline-matched_holdout_predictions.csv'} not found"]
    section = compare_on_holdout(predictions, CANDIDATES, REFERENCES, skipped, seed=0, n_resamples=500)
    assert section is not None and section["n_images"] == N_IMAGES and section["n_positive"] == int(y.sum())
    by_key = {(c["strategy"], c["reference"]): c for c in section["comparisons"]}
    assert set(by_key) == {("augmented", "baseline"), ("curriculum", "baseline")}

    # DeLong and McNemar on the fold-ensembles, as the reference implementations compute them
    base, aug = predictions["baseline"], predictions["augmented"]
    augmented = by_key[("augmented", "baseline")]
    delong = st.delong_test(y, base.probability["ensemble"], aug.probability["ensemble"])
    assert augmented["tests"]["auroc"]["p"] == pytest.approx(delong.p)
    assert augmented["tests"]["auroc"]["difference"] == pytest.approx(delong.difference)
    right_base, right_aug = base.decision["ensemble"] == y, aug.decision["ensemble"] == y
    table = [[np.sum(right_base & right_aug), np.sum(right_base & ~right_aug)]]
    table.append([np.sum(~right_base & right_aug), np.sum(~right_base & ~right_aug)])
    exact = table[0][1] + table[1][0] < st.MCNEMAR_EXACT_BELOW
    assert augmented["tests"]["accuracy"]["p"] == pytest.approx(mcnemar(table, exact=exact, correction=True).pvalue)
    assert augmented["outcome"] == "helped" and augmented["tests"]["auroc"]["p_holm"] < 0.05
    assert by_key[("curriculum", "baseline")]["outcome"] == "no significant difference"
    assert section["n_primary_tests"] == 4

    # the minimum detectable effect of this design: DeLong SE x 2.80; Connor's formula at the observed discordance
    mde = augmented["mde"]
    assert mde["auroc"] == pytest.approx(st.mde_from_se(delong.se))
    assert mde["accuracy"] == pytest.approx(st.mde_paired_proportion(N_IMAGES, mde["accuracy_discordance"]))

    # every metric's interval and every difference's interval inside its bounds
    for entry in section["strategies"].values():
        for metric in st.HOLDOUT_METRICS:
            low, high = entry["ensemble"][metric]["ci95"]
            assert 0 <= low <= entry["ensemble"][metric]["value"] <= high <= 1
            spread = entry["fold_spread"][metric]
            assert spread["min"] <= spread["mean"] <= spread["max"] and spread["n_models"] == 3
    for comparison in section["comparisons"]:
        for test in comparison["tests"].values():
            assert -1 <= test["bootstrap_ci95"][0] <= test["bootstrap_ci95"][1] <= 1

    # the verdict in plain words: p-values and what this run could have detected
    curriculum = by_key[("curriculum", "baseline")]
    words = overall_verdict(section, "curriculum")
    assert words.startswith("curriculum vs baseline: no significant difference")
    assert f"DeLong p = {curriculum['tests']['auroc']['p']:.3g}" in words
    assert f"McNemar p = {curriculum['tests']['accuracy']['p']:.3g}" in words
    assert (
        f"this run could have detected ΔAUROC ≥ {curriculum['mde']['auroc']:.3f} and "
        f"Δaccuracy ≥ {curriculum['mde']['accuracy']:.3f}"
    ) in words
    assert overall_verdict(section, "augmented").startswith("augmented vs baseline: augmented HELPED: significantly")


def test_the_matched_compute_baseline_is_a_second_reference(tmp_path: Path) -> None:
    write_predictions(tmp_path, matched=True)
    skipped: list[str] = []
    predictions = load_predictions(tmp_path, STRATEGIES, skipped)  # STRATEGIES holds baseline-matched
    section = compare_on_holdout(predictions, CANDIDATES, REFERENCES, skipped, n_resamples=200)
    assert skipped == []
    pairs = [(c["strategy"], c["reference"]) for c in section["comparisons"]]
    assert pairs == [(s, r) for r in ("baseline", "baseline-matched") for s in ("augmented", "curriculum")]
    assert section["n_primary_tests"] == 8
    assert overall_verdict(section, "augmented").count("augmented vs baseline") == 2  # and vs baseline-matched


def test_no_reference_predictions_no_verdict(tmp_path: Path) -> None:
    write_predictions(tmp_path)
    (tmp_path / "baseline_holdout_predictions.csv").unlink()
    skipped: list[str] = []
    section = compare_on_holdout(load_predictions(tmp_path, STRATEGIES, skipped), CANDIDATES, REFERENCES, skipped)
    assert (
        section is None
        and skipped[-1] == "image-by-image tests: no hold-out predictions of baseline or baseline-matched"
    )
    assert overall_verdict(section, "augmented").startswith("cannot tell whether augmented helped")


def test_smoke_run_rule_and_the_reports_first_line(tmp_path: Path) -> None:
    def results(**config: int | None) -> dict[str, StrategyResults]:
        return {
            "baseline": StrategyResults("baseline", history={"config": {"max_images": None, "epochs": 8, **config}})
        }

    assert smoke_run(results()) is None
    assert smoke_run(results(max_images=680)) == "baseline trained on a subset of 680 development images"
    assert smoke_run(results(epochs=3)) == "baseline trained for 3 epoch(s)"

    write_predictions(tmp_path)
    skipped: list[str] = []
    section = compare_on_holdout(load_predictions(tmp_path, STRATEGIES, skipped), CANDIDATES, REFERENCES, skipped)
    summary = {
        "smoke_run": smoke_run(results(max_images=680, epochs=3)),
        "holdout_tests": section,
        "comparisons": [],
        "strategies": {},
        "skipped": skipped,
        "outputs": ["comparison_report.txt"],
    }
    text = render_report(summary)
    assert text.splitlines()[0].startswith(
        "SMOKE RUN: this run cannot decide whether the synthetic images help (baseline trained on a subset of 680 "
        "development images; baseline trained for 3 epoch(s))"
    )
    assert "- curriculum vs baseline: no significant difference" in text
    assert "this run could have detected ΔAUROC ≥" in text
    assert "Image-by-image tests on the hold-out set" in text and "minimum detectable effect" in text
    summary["smoke_run"] = None
    assert render_report(summary).startswith("GAN-enhanced pneumonia classifier: analysis report")
