"""The verdict's evidence: each strategy against the baseline (and the matched-compute baseline) image by image on
the hold-out, from the classifier step's `<strategy>_holdout_predictions.csv` (shared.predictions).

Each strategy is represented by its fold-ensemble (mean calibrated probability, at the mean of its fold models'
thresholds; with --repeats, the fold models of every repeat). AUROC: DeLong's test; accuracy, sensitivity,
specificity: McNemar's test at each model's own operating point; every metric and every
difference with a stratified percentile bootstrap interval; the minimum detectable
effect (80% power, two-sided alpha 0.05) of AUROC and accuracy for these images. The primary tests (AUROC and
accuracy of every comparison) are Holm-adjusted together; sensitivity and specificity are secondary (raw p).
Beside them, the fold models' spread: mean and min-max of each metric over the fold models.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from services.analyzer.repeats import load_repeats, merge_repeats
from shared import layout
from shared import stats as st
from shared.predictions import ENSEMBLE, HoldoutPredictions

log = logging.getLogger(__name__)

PRIMARY = ("auroc", "accuracy")
SECONDARY = ("sensitivity", "specificity")
TEST_NAME = {"auroc": "DeLong", "accuracy": "McNemar", "sensitivity": "McNemar", "specificity": "McNemar"}
LABEL = {"auroc": "AUROC", "accuracy": "accuracy", "sensitivity": "sensitivity", "specificity": "specificity"}


def _skip(skipped: list[str], message: str) -> None:
    log.warning("skipped: %s", message)
    skipped.append(message)


def load_predictions(
    metrics_dir: Path,
    strategies: tuple[str, ...],
    skipped: list[str],
    by_repeat: dict[str, dict[int, HoldoutPredictions]] | None = None,
) -> dict[str, HoldoutPredictions]:
    """Every strategy's hold-out predictions that exist, its repeats (services.analyzer.repeats) merged into one
    set of fold models; a line in `skipped` for each missing one. `by_repeat`, when given, receives each
    strategy's predictions per repeat."""
    found = {}
    for strategy in strategies:
        repeats = load_repeats(metrics_dir, strategy)
        if not repeats:
            _skip(skipped, f"image-by-image tests: {metrics_dir / layout.holdout_predictions_name(strategy)} not found")
            continue
        try:
            found[strategy] = merge_repeats(repeats)
        except ValueError as exc:
            _skip(skipped, f"image-by-image tests: {strategy}: {exc}")
            continue
        if by_repeat is not None:
            by_repeat[strategy] = {repeat: predictions for repeat, (predictions, _) in repeats.items()}
    return found


def fold_spread(predictions: HoldoutPredictions) -> dict[str, dict[str, float]]:
    """Each metric's mean, min and max over the fold models (each at its own operating point)."""
    per_fold = [
        st.holdout_metrics(predictions.labels, predictions.probability[name], predictions.decision[name])
        for name in predictions.fold_models
    ]
    return {
        metric: {
            "mean": float(np.mean([m[metric] for m in per_fold])),
            "min": float(min(m[metric] for m in per_fold)),
            "max": float(max(m[metric] for m in per_fold)),
            "n_models": len(per_fold),
        }
        for metric in st.HOLDOUT_METRICS
    }


def compare_pair(
    reference: HoldoutPredictions, candidate: HoldoutPredictions, seed: int, n_resamples: int
) -> dict[str, Any]:
    """One candidate against one reference on the same images: tests, bootstrap intervals of the differences, MDE."""
    y = reference.labels
    ref_p, ref_d = reference.probability[ENSEMBLE], reference.decision[ENSEMBLE]
    cand_p, cand_d = candidate.probability[ENSEMBLE], candidate.decision[ENSEMBLE]
    delong = st.delong_test(y, ref_p, cand_p)
    mcnemar = st.paired_metric_tests(y, ref_d, cand_d)
    diffs = st.bootstrap_differences(y, (ref_p, ref_d), (cand_p, cand_d), n_resamples=n_resamples, seed=seed)
    tests: dict[str, dict[str, Any]] = {
        "auroc": {
            "test": "DeLong",
            "reference": delong.auroc_reference,
            "candidate": delong.auroc_candidate,
            "difference": delong.difference,
            "p": delong.p,
            "z": delong.z,
            "se": delong.se,
            "delong_ci95": list(delong.ci95),
        }
    }
    for metric in ("accuracy", *SECONDARY):
        tests[metric] = {"test": "McNemar", **mcnemar[metric]}
    for metric in st.HOLDOUT_METRICS:
        tests[metric]["bootstrap_ci95"] = diffs[metric]["ci95"]
    discordance = (mcnemar["accuracy"]["only_reference"] + mcnemar["accuracy"]["only_candidate"]) / len(y)
    return {
        "tests": tests,
        "mde": {
            "auroc": st.mde_from_se(delong.se) if delong.se > 0 else None,
            "accuracy": st.mde_paired_proportion(len(y), discordance),
            "accuracy_discordance": discordance,
            "power": st.POWER,
            "alpha": st.ALPHA,
        },
    }


def outcome(comparison: dict[str, Any]) -> str:
    """'helped', 'hurt', 'mixed' or 'no significant difference', from the Holm-adjusted primary tests."""
    directions = {
        "helped" if comparison["tests"][m]["difference"] > 0 else "hurt"
        for m in PRIMARY
        if comparison["tests"][m]["p_holm"] < st.ALPHA
    }
    if not directions:
        return "no significant difference"
    return "mixed" if len(directions) == 2 else directions.pop()


def compare_on_holdout(
    predictions: dict[str, HoldoutPredictions],
    candidates: tuple[str, ...],
    references: tuple[str, ...],
    skipped: list[str],
    seed: int = 0,
    n_resamples: int = st.BOOTSTRAP_RESAMPLES,
) -> dict[str, Any] | None:
    """Every candidate against every reference whose predictions exist; None when no pair can be compared."""
    if not any(r in predictions for r in references):
        _skip(skipped, f"image-by-image tests: no hold-out predictions of {' or '.join(references)}")
        return None
    first = predictions[next(r for r in references if r in predictions)]
    usable: dict[str, HoldoutPredictions] = {}
    for strategy, found in predictions.items():
        if not (np.array_equal(found.images, first.images) and np.array_equal(found.labels, first.labels)):
            _skip(skipped, f"image-by-image tests: {strategy}'s hold-out images differ from the others'")
            continue
        usable[strategy] = found
    y = first.labels
    if y.min() == y.max():
        _skip(skipped, "image-by-image tests: the hold-out holds only one class")
        return None
    section: dict[str, Any] = {
        "model": "fold-ensemble: mean calibrated probability of the fold models, at the mean of their thresholds",
        "n_images": len(y),
        "n_positive": int(y.sum()),
        "n_negative": int((y == 0).sum()),
        "bootstrap": {"resamples": n_resamples, "seed": seed, "method": "stratified percentile"},
        "primary_metrics": list(PRIMARY),
        "strategies": {},
        "comparisons": [],
    }
    for strategy, found in usable.items():
        section["strategies"][strategy] = {
            "ensemble": st.bootstrap_metrics(
                y, found.probability[ENSEMBLE], found.decision[ENSEMBLE], n_resamples=n_resamples, seed=seed
            ),
            "fold_spread": fold_spread(found),
        }
    for reference in references:
        for candidate in candidates:
            if reference in usable and candidate in usable and candidate != reference:
                compared = compare_pair(usable[reference], usable[candidate], seed, n_resamples)
                section["comparisons"].append({"strategy": candidate, "reference": reference, **compared})
    primary = [(c, m) for c in section["comparisons"] for m in PRIMARY]
    for (comparison, metric), adjusted in zip(
        primary, st.holm_adjust([c["tests"][m]["p"] for c, m in primary]), strict=True
    ):
        comparison["tests"][metric]["p_holm"] = adjusted
    for comparison in section["comparisons"]:
        comparison["outcome"] = outcome(comparison)
    section["n_primary_tests"] = len(primary)
    log.info("image-by-image tests: %d comparisons on %d hold-out images", len(section["comparisons"]), len(y))
    return section


def _p(value: float) -> str:
    return f"{value:.3g}"


def _ci(ci: list[float], signed: bool = True) -> str:
    fmt = "{:+.3f}" if signed else "{:.3f}"
    return f"[{fmt.format(ci[0])}, {fmt.format(ci[1])}]"


def _mde(value: float | None) -> str:
    return "nothing (too few images on which the models disagree)" if value is None else f"≥ {value:.3f}"


def verdict(comparison: dict[str, Any]) -> str:
    """One comparison's answer in plain words, with the primary tests' p-values and the minimum detectable effect."""
    s, ref, tests, mde = comparison["strategy"], comparison["reference"], comparison["tests"], comparison["mde"]
    changes = "; ".join(
        f"{LABEL[m]} {tests[m]['difference']:+.3f} (95% CI {_ci(tests[m]['bootstrap_ci95'])}, "
        f"{TEST_NAME[m]} p = {_p(tests[m]['p'])}, Holm {_p(tests[m]['p_holm'])})"
        for m in PRIMARY
    )
    power = f"this run could have detected ΔAUROC {_mde(mde['auroc'])} and Δaccuracy {_mde(mde['accuracy'])}"
    result = comparison["outcome"]
    if result == "no significant difference":
        head = f"{s} vs {ref}: no significant difference"
    elif result == "mixed":
        head = f"{s} vs {ref}: MIXED: significantly better on one primary metric and worse on the other"
    else:
        better = [LABEL[m] for m in PRIMARY if tests[m]["p_holm"] < st.ALPHA]
        word = "HELPED" if result == "helped" else "HURT"
        direction = "higher" if result == "helped" else "lower"
        head = f"{s} vs {ref}: {s} {word}: significantly {direction} {' and '.join(better)}"
    return f"{head} [{changes}]; {power} (80% power, two-sided alpha {st.ALPHA})"


def render_holdout_tests(section: dict[str, Any] | None) -> list[str]:
    """The report's section of image-by-image tests, each strategy's metrics with intervals, and the fold spread."""
    title = "Image-by-image tests on the hold-out set"
    lines = [title, "-" * len(title)]
    if section is None:
        return lines + ["none could be run (see 'Skipped').", ""]
    lines.append(
        f"{section['n_images']} hold-out images ({section['n_positive']} pneumonia, {section['n_negative']} normal), "
        f"never seen by the GAN or any classifier. Each strategy: its {section['model']}."
    )
    lines.append(
        f"95% intervals: stratified percentile bootstrap, {section['bootstrap']['resamples']} resamples (seed "
        f"{section['bootstrap']['seed']}); primary tests (AUROC, accuracy) Holm-adjusted over "
        f"{section['n_primary_tests']}; sensitivity and specificity are secondary."
    )
    for comparison in section["comparisons"]:
        lines.append(f"{comparison['strategy']} vs {comparison['reference']}:")
        for metric, test in comparison["tests"].items():
            holm = f", Holm {_p(test['p_holm'])}" if "p_holm" in test else ""
            method = "DeLong" if metric == "auroc" else f"McNemar ({test['method']})"
            lines.append(
                f"  {LABEL[metric]:<12} {test['reference']:.3f} -> {test['candidate']:.3f}: "
                f"{test['difference']:+.3f} (95% CI {_ci(test['bootstrap_ci95'])}); {method} p = {_p(test['p'])}{holm}"
            )
        mde = comparison["mde"]
        lines.append(
            f"  minimum detectable effect (80% power, alpha {mde['alpha']}): ΔAUROC {_mde(mde['auroc'])}, "
            f"Δaccuracy {_mde(mde['accuracy'])} (the models disagree on {mde['accuracy_discordance']:.1%} of images)"
        )
    lines.append("Each strategy's fold-ensemble (95% CI) and its fold models' spread (mean, min-max):")
    for strategy, entry in section["strategies"].items():
        cells = []
        for metric in st.HOLDOUT_METRICS:
            value, spread = entry["ensemble"][metric], entry["fold_spread"][metric]
            cells.append(
                f"{LABEL[metric]} {value['value']:.3f} {_ci(value['ci95'], signed=False)} "
                f"(folds {spread['mean']:.3f}, {spread['min']:.3f}-{spread['max']:.3f})"
            )
        lines.append(f"  {strategy:<16} " + "; ".join(cells))
    return lines + [""]
