"""The strategies' metrics side by side, the verdict and the report in plain words.

Inputs are the classifier trainer's files in the metrics directory, for each strategy:
`{strategy}_training_history.json`, `{strategy}_cv_summary.json`, `{strategy}_final_metrics.json` and
`{strategy}_holdout_predictions.csv`. The verdict rests on the image-by-image tests on the hold-out
(services.analyzer.holdout_tests: DeLong, McNemar, bootstrap, minimum detectable effect). Beside them, the fold
spread: the fold models' hold-out metrics (`holdout_per_fold`) paired by fold (fold i of a strategy with fold i of
the baseline), a secondary view whose paired t-test is optimistic and has little power.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from services.analyzer.holdout_tests import render_holdout_tests, verdict
from services.analyzer.repeats import render_seed_paired
from services.analyzer.shift_tests import render_shift
from shared.configs.classifier import STRATEGIES  # the one list of strategies (re-exported for the analyzer)
from shared.errors import DatasetError
from shared.stats import holm_adjust

log = logging.getLogger(__name__)

REFERENCE = "baseline"
MATCHED_REFERENCE = "baseline-matched"  # the matched-compute control, compared with when its files exist
REFERENCES = (REFERENCE, MATCHED_REFERENCE)
CANDIDATES = ("augmented", "curriculum")
TESTED_METRICS = ("accuracy", "auroc")
SECONDARY_METRICS = ("sensitivity", "specificity")
CV_METRICS = ("accuracy", "precision", "recall", "f1", "auroc", "sensitivity", "specificity")
ALPHA = 0.05
# Below this many folds a verdict carries a warning; the seed runs 5-fold cross-validation.
MIN_FOLDS_TO_CONCLUDE = 5
# A smoke run (cannot decide the question): a classifier trained on a --max-images subset or for fewer epochs.
MIN_EPOCHS_TO_DECIDE = 5
METRIC_FILES = {
    "history": "{strategy}_training_history.json",
    "cv": "{strategy}_cv_summary.json",
    "final": "{strategy}_final_metrics.json",
}


@dataclass
class StrategyResults:
    """One strategy's metrics files; a file that was not found is None."""

    strategy: str
    history: dict[str, Any] | None = None
    cv: dict[str, Any] | None = None
    final: dict[str, Any] | None = None


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`; DatasetError naming the file when it is not valid JSON."""
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"malformed metrics file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise DatasetError(f"malformed metrics file {path}: expected a JSON object, found {type(data).__name__}")
    return data


def load_results(metrics_dir: Path, skipped: list[str]) -> dict[str, StrategyResults]:
    """Every strategy's metrics files that exist; a line in `skipped` for each missing one."""
    results = {}
    for strategy in STRATEGIES:
        found = StrategyResults(strategy)
        for field, pattern in METRIC_FILES.items():
            path = metrics_dir / pattern.format(strategy=strategy)
            if path.is_file():
                setattr(found, field, read_json(path))
            else:
                note(skipped, f"{strategy}: {path} not found")
        if found.history or found.cv or found.final:
            results[strategy] = found
    return results


def note(skipped: list[str], message: str) -> None:
    """Log a skipped input or analysis and keep the line for the report."""
    log.warning("skipped: %s", message)
    skipped.append(message)


def mean_over_folds(history: dict[str, Any], key: str) -> tuple[list[int], list[float]]:
    """(epochs, mean of `key` over the folds that reached each epoch); folds may stop early."""
    per_epoch: dict[int, list[float]] = {}
    for fold in history.get("folds", []):
        for row in fold.get("epochs", []):
            if row.get(key) is not None:
                per_epoch.setdefault(int(row["epoch"]), []).append(float(row[key]))
    epochs = sorted(per_epoch)
    return epochs, [float(np.mean(per_epoch[e])) for e in epochs]


def paired_test(reference: Sequence[float], candidate: Sequence[float]) -> dict[str, Any]:
    """Paired comparison of candidate - reference across folds.

    Returns n, mean_difference, ci95 (t-distribution, n - 1 degrees of freedom), t_test_p (scipy ttest_rel),
    wilcoxon_p (scipy wilcoxon, exact for small n) and wilcoxon_min_p, the smallest two-sided p the Wilcoxon test
    can reach with n folds (2 / 2^n): at n <= 5 it can never fall below 0.05. Untestable values are None.
    """
    diffs = np.asarray(candidate, dtype=np.float64) - np.asarray(reference, dtype=np.float64)
    n = len(diffs)
    result: dict[str, Any] = {
        "n": n,
        "mean_difference": float(diffs.mean()) if n else None,
        "ci95": None,
        "t_test_p": None,
        "wilcoxon_p": None,
        "wilcoxon_min_p": 2.0 / 2**n if n else None,
    }
    if n < 2:
        return result
    sd = float(diffs.std(ddof=1))
    half_width = float(stats.t.ppf(0.975, df=n - 1)) * sd / math.sqrt(n)
    result["ci95"] = [result["mean_difference"] - half_width, result["mean_difference"] + half_width]
    if sd > 0:  # with identical differences in every fold the t statistic is undefined
        result["t_test_p"] = float(stats.ttest_rel(candidate, reference).pvalue)
    if np.any(diffs != 0):
        result["wilcoxon_p"] = float(stats.wilcoxon(candidate, reference).pvalue)
    return result


def smoke_run(results: dict[str, StrategyResults]) -> str | None:
    """Why this run is a smoke run that cannot decide the question, or None. The rule: some strategy's classifier
    trained on a subset of the development images (--max-images) or for fewer than MIN_EPOCHS_TO_DECIDE epochs."""
    reasons = []
    for strategy, found in results.items():
        config = (found.history or {}).get("config") or {}
        if config.get("max_images") is not None:
            reasons.append(f"{strategy} trained on a subset of {config['max_images']} development images")
        if config.get("epochs") is not None and config["epochs"] < MIN_EPOCHS_TO_DECIDE:
            reasons.append(f"{strategy} trained for {config['epochs']} epoch(s)")
    return "; ".join(reasons) or None


def compare_strategies(results: dict[str, StrategyResults], skipped: list[str]) -> list[dict[str, Any]]:
    """Each candidate strategy vs the baseline on each tested metric, paired by fold on the hold-out set.

    Significance uses the paired t-test's p-value Holm-adjusted over all comparisons made here; the Wilcoxon test
    is reported beside it as a check that does not assume normal differences.
    """
    baseline = results.get(REFERENCE)
    if baseline is None or baseline.final is None or not baseline.final.get("holdout_per_fold"):
        note(skipped, f"significance tests: no per-fold hold-out metrics for the {REFERENCE}")
        return []
    comparisons = []
    for strategy in CANDIDATES:
        candidate = results.get(strategy)
        if candidate is None or candidate.final is None or not candidate.final.get("holdout_per_fold"):
            note(skipped, f"significance tests: no per-fold hold-out metrics for {strategy}")
            continue
        ref_folds = {fold["fold"]: fold for fold in baseline.final["holdout_per_fold"]}
        cand_folds = {fold["fold"]: fold for fold in candidate.final["holdout_per_fold"]}
        if set(ref_folds) != set(cand_folds):
            note(
                skipped,
                f"significance tests: {strategy} has fold models {sorted(cand_folds)}, the {REFERENCE} "
                f"{sorted(ref_folds)}; folds cannot be paired",
            )
            continue
        folds = sorted(ref_folds)
        for metric in TESTED_METRICS:
            ref = [ref_folds[fold].get(metric) for fold in folds]
            cand = [cand_folds[fold].get(metric) for fold in folds]
            if any(value is None for value in ref + cand):
                note(skipped, f"significance tests: {metric} is undefined in some fold of {strategy} or the baseline")
                continue
            test = paired_test(ref, cand)
            comparisons.append({"strategy": strategy, "reference": REFERENCE, "metric": metric, **test})
    tested = [c for c in comparisons if c["t_test_p"] is not None]
    for comparison, adjusted in zip(tested, holm_adjust([c["t_test_p"] for c in tested]), strict=True):
        comparison["t_test_p_holm"] = adjusted
    for comparison in comparisons:
        comparison.setdefault("t_test_p_holm", None)
        comparison["outcome"] = outcome(comparison)
    return comparisons


def outcome(comparison: dict[str, Any]) -> str:
    """'helped', 'hurt', 'no significant difference' or 'untestable' (fewer than two folds, or no variation)."""
    p = comparison["t_test_p_holm"]
    if p is None:
        return "untestable"
    if p >= ALPHA:
        return "no significant difference"
    return "helped" if comparison["mean_difference"] > 0 else "hurt"


def overall_verdict(holdout: dict[str, Any] | None, strategy: str) -> str:
    """One strategy's answer in plain words, from the image-by-image tests on the hold-out: against each reference
    compared, the primary metrics' changes with 95% CI and p-values, and the minimum detectable effect."""
    mine = [c for c in (holdout or {}).get("comparisons", []) if c["strategy"] == strategy]
    if not mine:
        return f"cannot tell whether {strategy} helped: no per-image hold-out predictions to compare (see 'Skipped')"
    return ".\n  ".join(verdict(c) for c in mine)


def fold_verdict(comparisons: list[dict[str, Any]], strategy: str) -> str:
    """One strategy's fold-paired summary (secondary): each metric's mean change and 95% CI over fold models."""
    mine = [c for c in comparisons if c["strategy"] == strategy]
    outcomes = {c["outcome"] for c in mine}
    if not outcomes or outcomes == {"untestable"}:
        return f"{strategy}: no testable paired fold metrics"
    if "helped" in outcomes and "hurt" in outcomes:
        verdict = f"{strategy} over fold models: mixed, better on one metric and worse on another"
    elif "helped" in outcomes:
        verdict = f"{strategy} over fold models: better than the {REFERENCE} on at least one metric, worse on none"
    elif "hurt" in outcomes:
        verdict = f"{strategy} over fold models: worse than the {REFERENCE} on at least one metric, better on none"
    else:
        verdict = f"{strategy} over fold models: no significant difference from the {REFERENCE}"
    changes = ", ".join(
        f"{c['metric']} {c['mean_difference']:+.3f} (95% CI {_interval(c['ci95'], signed=True)})" for c in mine
    )
    n = min(c["n"] for c in mine)
    caution = f"; only {n} folds: indicative, not conclusive" if n < MIN_FOLDS_TO_CONCLUDE else ""
    return f"{verdict} [{changes}; {n} folds{caution}]"


def _num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _p(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def _interval(ci: Sequence[float] | None, digits: int = 3, signed: bool = False) -> str:
    if ci is None:
        return "n/a"
    fmt = f"{{:+.{digits}f}}" if signed else f"{{:.{digits}f}}"
    return f"[{fmt.format(ci[0])}, {fmt.format(ci[1])}]"


def _spread(values: list[float | None]) -> str:
    """'mean (min-max)' of the fold models' values, 'n/a' when any is undefined."""
    if not values or any(v is None for v in values):
        return "n/a"
    return f"{np.mean(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def _mean_ci(summary: dict[str, Any], metric: str) -> str:
    """'mean [low, high]' of a fold summary, 'mean' without a CI, 'n/a' without a mean."""
    mean, ci = summary["average"].get(metric), (summary.get("ci95") or {}).get(metric)
    if mean is None:
        return "n/a"
    return f"{mean:.3f}" if ci is None else f"{mean:.3f} {_interval(ci)}"


def describe_comparison(c: dict[str, Any]) -> list[str]:
    """The plain-words lines for one comparison."""
    head = f"{c['strategy']} vs {c['reference']}, {c['metric']} ({c['n']} paired fold model(s) on the hold-out set):"
    if c["n"] < 2:
        return [head, "  too few folds to test anything: at least 2 paired folds are needed."]
    lines = [
        head,
        f"  mean difference {c['mean_difference']:+.3f} (95% CI {_interval(c['ci95'], signed=True)}); "
        f"paired t-test p = {_p(c['t_test_p'])} (Holm-adjusted {_p(c['t_test_p_holm'])}), "
        f"Wilcoxon signed-rank p = {_p(c['wilcoxon_p'])}.",
    ]
    if c["outcome"] == "untestable":
        lines.append("  the difference is the same in every fold, so the t-test is undefined: no conclusion.")
    elif c["outcome"] == "no significant difference":
        lines.append(f"  => no significant difference at alpha = {ALPHA} (the change may be noise).")
    else:
        change = "IMPROVED" if c["outcome"] == "helped" else "WORSENED"
        lines.append(f"  => {c['strategy']} {change} {c['metric']} by {abs(c['mean_difference']):.3f}, significantly.")
    if c["n"] < MIN_FOLDS_TO_CONCLUDE:
        lines.append(
            f"  caution: only {c['n']} folds; the test has little power: these numbers are indicative, not conclusive."
        )
    if c["wilcoxon_min_p"] >= ALPHA:
        lines.append(
            f"  note: with {c['n']} folds the Wilcoxon test cannot go below p = {c['wilcoxon_min_p']:.3g}, "
            f"so it can never reach {ALPHA}."
        )
    return lines


def render_report(summary: dict[str, Any]) -> str:
    """comparison_report.txt from analysis_summary.json's content: every number it states is in the summary."""
    lines = []
    smoke = summary.get("smoke_run")
    if smoke:
        lines += [
            f"SMOKE RUN: this run cannot decide whether the synthetic images help ({smoke}); it only shows that the "
            "pipeline works. Run a profile that uses every development image for an answer.",
            "",
        ]
    lines += ["GAN-enhanced pneumonia classifier: analysis report", "=" * 52, ""]

    lines += ["ANSWER", "------"]
    holdout = summary.get("holdout_tests")
    for strategy in CANDIDATES:
        lines.append(f"- {overall_verdict(holdout, strategy)}.")
    lines += [
        "  (image by image on the hold-out: DeLong's test for AUROC, McNemar's for accuracy, Holm-adjusted, "
        f"alpha = {ALPHA}; see below)",
        "",
    ]
    lines += render_holdout_tests(holdout)
    lines += render_shift(summary.get("shift"))
    lines += render_seed_paired(summary.get("repeats"))

    comparisons = summary["comparisons"]
    lines += ["Fold spread (secondary: fold models paired by fold on the hold-out set)", "-" * 71]
    for strategy in CANDIDATES:
        lines.append(f"- {fold_verdict(comparisons, strategy)}.")
    for comparison in comparisons:
        lines += describe_comparison(comparison)
    if not comparisons:
        lines.append("none could be run (see 'Skipped').")
    lines += [
        "Caveat: the fold models share most of their training data and are scored on the same hold-out images, so",
        "the fold-to-fold spread understates the uncertainty of a new run on new patients; p-values are optimistic.",
        "",
    ]

    lines += ["Hold-out metrics of each strategy's fold models (mean, min-max)", "-" * 63]
    for strategy, entry in summary["strategies"].items():
        per_fold = entry.get("holdout_per_fold")
        if not per_fold:
            lines.append(f"{strategy:<16} no hold-out metrics")
            continue
        cells = [f"{m} {_spread([fold.get(m) for fold in per_fold])}" for m in TESTED_METRICS + SECONDARY_METRICS]
        lines.append(f"{strategy:<16} " + "; ".join(cells))
    lines.append("")

    lines += [
        "Cross-validation metrics (validation folds, mean and 95% CI)",
        "-" * 60,
        "Note: the GAN learned from the whole development set, so its images may resemble validation-fold images and",
        "the augmented and curriculum validation metrics may be optimistic. The hold-out set above was never seen by",
        "the GAN or any classifier; the answer at the top rests on it.",
    ]
    for strategy, entry in summary["strategies"].items():
        cv = entry.get("cv")
        if cv is None:
            lines.append(f"{strategy:<16} no cross-validation summary")
            continue
        lines.append(f"{strategy} ({cv['n_folds']} folds):")
        for metric in CV_METRICS:
            lines.append(f"  {metric:<12} {_mean_ci(cv, metric)}")
    lines.append("")

    lines += render_class_mix(summary)
    lines += render_image_quality(summary)
    lines += render_memorization(summary.get("memorization"))
    lines += render_tstr(summary.get("tstr"))

    lines += ["Skipped", "-------"]
    lines += [f"skipped: {message}" for message in summary["skipped"]] or ["nothing"]
    lines += ["", "Files written: " + ", ".join(summary["outputs"]), ""]
    return "\n".join(lines)


def render_image_quality(summary: dict[str, Any]) -> list[str]:
    lines = ["Synthetic image quality", "-----------------------"]
    ssim = summary.get("ssim")
    if ssim:
        lines += [
            f"SSIM ({ssim['image_size'][0]}x{ssim['image_size'][1]} px): each synthetic image's mean SSIM against "
            f"{ssim['n_real']} real development-set {ssim.get('class', 'pneumonia')} images (the synthesized class)",
            f"  synthetic vs real: mean {ssim['synthetic_vs_real']['mean']:.3f}, median "
            f"{ssim['synthetic_vs_real']['median']:.3f} ({ssim['n_synthetic']} synthetic images)",
            f"  real vs real (reference): mean {ssim['real_vs_real']['mean']:.3f}, median "
            f"{ssim['real_vs_real']['median']:.3f}",
        ]
    diversity = summary.get("diversity")
    if diversity:
        real, synthetic = diversity["real"], diversity["synthetic"]
        lines += [
            f"Diversity: mean pairwise MS-SSIM among {diversity.get('class', 'pneumonia')} images (lower = more "
            f"diverse; {diversity['scales']} "
            f"scale(s), {diversity['window_size']}-px window, {synthetic['pairs']} random pairs per set):",
            f"  synthetic {synthetic['mean']:.3f} ± {synthetic['std_error']:.3f}; real {real['mean']:.3f} ± "
            f"{real['std_error']:.3f} (± one standard error); difference {diversity['difference']:+.3f}",
        ]
        if diversity["mode_collapse"]:
            lines.append(
                "  WARNING: the synthetic images are clearly less diverse than real ones: possible mode collapse."
            )
    fd = summary.get("frechet_classifier")
    if fd:
        lines += [
            f"Fréchet distance in the {fd['model']} classifier's feature space ({fd['feature_dim']}-d, "
            f"{fd['n_per_set']} {fd.get('class', 'pneumonia')} images per set):",
            f"  real vs synthetic {fd['real_vs_synthetic']:.3f}; real vs real (two disjoint halves, the floor) "
            f"{fd['real_vs_real']:.3f}; ratio {_num(fd['ratio'], 2)}",
        ]
        if fd["n_per_set"] <= fd["feature_dim"]:
            lines.append("  (fewer images than feature dimensions: biased upwards; compare it only with its floor)")
    fid = summary.get("inception_fid")
    if fid:
        lines += [
            f"Inception FID (torch-fidelity weights, {fid['n_per_set']} images per set): real vs synthetic "
            f"{fid['real_vs_synthetic']:.2f}; real vs real (floor) {fid['real_vs_real']:.2f}",
        ]
    if not (ssim or diversity or fd or fid):
        lines.append("no image-quality figures (see 'Skipped').")
    lines.append("Lower Fréchet distances are better; near the real-vs-real floor the two sets look alike.")
    lines.append("")
    return lines


def render_memorization(memo: dict[str, Any] | None) -> list[str]:
    lines = ["Memorization check (privacy)", "----------------------------"]
    if memo is None:
        return lines + ["not run (see 'Skipped').", ""]
    lines += [
        f"{memo['n_synthetic']} synthetic images searched against {memo['n_real']} development-set real images "
        f"({memo['image_size'][0]}x{memo['image_size'][1]} px).",
        f"  SSIM to the nearest real image: synthetic median {memo['nearest_ssim']['median']:.3f}, max "
        f"{memo['nearest_ssim']['max']:.3f}; for comparison, real images to their nearest other real image: median "
        f"{memo['real_nearest_ssim']['median']:.3f}, max {memo['real_nearest_ssim']['max']:.3f}",
        f"  near-copies (SSIM >= {memo['threshold']}): {memo['n_flagged']} of {memo['n_synthetic']}",
    ]
    features = memo.get("feature_distance")
    if features:
        lines.append(
            f"  nearest-real classifier-feature distance: median {features['synthetic_median']:.3f}, min "
            f"{features['synthetic_min']:.3f}; real to nearest other real: median {features['real_median']:.3f}"
        )
    if memo["n_flagged"]:
        lines.append(
            "  => WARNING: the generator reproduces real patient images; do not share synthetic images as anonymous."
        )
        lines += [f"     {f['synthetic']} ~ {f['real']} (SSIM {f['ssim']:.3f})" for f in memo["flagged"]]
    else:
        lines.append("  => no synthetic image is a near-copy of a searched real image.")
    return lines + [""]


def render_tstr(tstr: dict[str, Any] | None) -> list[str]:
    lines = ["Train on synthetic, test on real (TSTR)", "---------------------------------------"]
    if tstr is None:
        return lines + ["not run (see 'Skipped').", ""]
    lines.append(
        f"{tstr['arch']} at {tstr['image_size']} px, {tstr['epochs']} epoch(s), {tstr['n_train']} balanced training "
        f"images, tested on {tstr['n_test']} real hold-out images:"
    )
    for name, label in (("tstr", "trained on synthetic (TSTR)"), ("trtr", "trained on real (TRTR)")):
        m = tstr[name]
        lines.append(f"  {label:<28} accuracy {_num(m['accuracy'])}, AUROC {_num(m['auroc'])}")
    lines += ["A TSTR score near TRTR means the synthetic images carry the class information of real ones.", ""]
    return lines


def render_class_mix(summary: dict[str, Any]) -> list[str]:
    """The training folds' class mix (summed over folds) before and after adding the synthetic images."""
    lines = ["Class mix of the training folds (images summed over folds: normal / pneumonia)", "-" * 78]
    found = False
    for strategy, entry in summary["strategies"].items():
        mix = entry.get("class_mix")
        if not mix:
            continue
        found = True

        def share(counts: dict[str, int]) -> str:
            total = counts["normal"] + counts["pneumonia"]
            normal = f"{100 * counts['normal'] / total:.0f}% normal" if total else "none"
            return f"{counts['normal']} / {counts['pneumonia']} ({normal})"

        lines.append(
            f"{strategy:<16} real {share(mix['real'])}; synthetic {share(mix['synthetic'])}; "
            f"after {share(mix['after'])}"
        )
    if not found:
        lines.append("no class mix recorded")
    lines += [
        "after = real + the whole synthetic pool (an epoch of augmented; curriculum adds a per-epoch share of it,",
        "baseline-matched resampled real images in the real mix instead).",
        "",
    ]
    return lines
