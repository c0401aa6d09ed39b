"""The estimate under shift: each strategy on MedMNIST-C's corruptions of the hold-out, and whether augmentation
changes robustness, image by image.

Inputs: the classifier step's `{strategy}_shifted_predictions.csv` (shared.predictions) and `{strategy}_holdout_
predictions.csv`, and the `operating_rules` entry of `{strategy}_final_metrics.json`. As on the clean hold-out, each
strategy is its fold-ensemble (the mean calibrated probability of its fold models, at the mean of their thresholds).

The robustness tests pair the strategies on the same images under every shift at once: one stratified bootstrap
draw of hold-out images is applied to all shifted copies, and the statistic is the candidate's minus the reference's
AUROC (and specificity at sensitivity 0.95: a common operating point, so that no threshold rule can pass for a better
model) averaged over the shifts. Its percentile interval, a two-sided bootstrap p-value, Holm across every comparison
and both metrics, and the minimum detectable effect from the bootstrap standard error, say whether augmentation
changed robustness and how large a change the data could have shown.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from shared import layout
from shared import stats as st
from shared.corruptions import CORRUPTIONS
from shared.metrics import COMMON_SENSITIVITY, specificity_at_sensitivity
from shared.predictions import ENSEMBLE, HoldoutPredictions, ShiftedPredictions, read_shifted_predictions

log = logging.getLogger(__name__)

ROBUSTNESS_METRICS = ("auroc", "specificity_at_sensitivity")
RESAMPLES = 1000  # per comparison, every shift at once


def load_shifted(metrics_dir: Path, strategies: tuple[str, ...], skipped: list[str]) -> dict[str, ShiftedPredictions]:
    """Every strategy's shifted predictions that exist; one line in `skipped` when none does."""
    found = {}
    for strategy in strategies:
        path = metrics_dir / layout.shifted_predictions_name(strategy)
        if path.is_file():
            found[strategy] = read_shifted_predictions(path)
    if not found:
        message = "estimate under shift: no shifted predictions (train-classifier --shift-severities none, or older)"
        log.warning("skipped: %s", message)
        skipped.append(message)
    return found


def set_metrics(labels: np.ndarray, predictions: HoldoutPredictions, refused: dict[str, np.ndarray] | None) -> dict:
    """The fold-ensemble on one set: AUROC, accuracy, sensitivity and specificity at its threshold, specificity at
    the common sensitivity, and the share of images the fold models' gates refused (mean over the fold models)."""
    metrics = st.holdout_metrics(labels, predictions.probability[ENSEMBLE], predictions.decision[ENSEMBLE])
    metrics["specificity_at_sensitivity"] = specificity_at_sensitivity(
        labels, predictions.probability[ENSEMBLE], COMMON_SENSITIVITY
    )
    metrics["refused"] = float(np.mean([flags.mean() for flags in refused.values()])) if refused else None
    return metrics


def family_of(shift: str) -> str:
    corruption, _, severity = shift.partition("@")
    return f"{CORRUPTIONS[corruption].family}@{severity}" if corruption in CORRUPTIONS else shift


def _spec_rows(probability: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Specificity at the common sensitivity for each resample (rows of positive and negative indices)."""
    positives = -np.sort(-probability[pos], axis=1)  # descending
    needed = max(1, int(np.ceil(COMMON_SENSITIVITY * pos.shape[1] - 1e-9)))
    threshold = positives[:, needed - 1][:, None]
    return (probability[neg] < threshold).mean(axis=1)


def robustness_rows(shifted: ShiftedPredictions, pos: np.ndarray, neg: np.ndarray) -> dict[str, np.ndarray]:
    """Each robustness metric averaged over the shifts, for each resample."""
    rows = {name: np.zeros(len(pos)) for name in ROBUSTNESS_METRICS}
    for predictions in shifted.per_shift.values():
        probability = predictions.probability[ENSEMBLE]
        rows["auroc"] += st.auroc_rows(probability[pos], probability[neg])
        rows["specificity_at_sensitivity"] += _spec_rows(probability, pos, neg)
    return {name: values / len(shifted.per_shift) for name, values in rows.items()}


def compare_robustness(
    reference: ShiftedPredictions, candidate: ShiftedPredictions, labels: np.ndarray, seed: int, n_resamples: int
) -> dict[str, Any]:
    """Candidate - reference of each robustness metric averaged over the shifts: the point value, the paired
    bootstrap's 95% interval, two-sided p and standard error, and the minimum detectable effect."""
    everything = (np.flatnonzero(labels == 1)[None, :], np.flatnonzero(labels == 0)[None, :])
    point_ref, point_cand = robustness_rows(reference, *everything), robustness_rows(candidate, *everything)
    pos, neg = st.stratified_resamples(labels, n_resamples, seed)
    rows_ref, rows_cand = robustness_rows(reference, pos, neg), robustness_rows(candidate, pos, neg)
    tests = {}
    for name in ROBUSTNESS_METRICS:
        differences = rows_cand[name] - rows_ref[name]
        se = float(differences.std(ddof=1))
        p = min(1.0, 2 * min((differences <= 0).mean(), (differences >= 0).mean()))
        tests[name] = {
            "reference": float(point_ref[name][0]),
            "candidate": float(point_cand[name][0]),
            "difference": float(point_cand[name][0] - point_ref[name][0]),
            "ci95": [float(np.quantile(differences, 0.025)), float(np.quantile(differences, 0.975))],
            "p": float(max(p, 1.0 / n_resamples)),
            "se": se,
            "mde": st.mde_from_se(se) if se > 0 else None,
        }
    return tests


def compare_under_shift(
    shifted: dict[str, ShiftedPredictions],
    holdout: dict[str, HoldoutPredictions],
    finals: dict[str, dict[str, Any] | None],
    candidates: tuple[str, ...],
    references: tuple[str, ...],
    seed: int = 0,
    n_resamples: int = RESAMPLES,
) -> dict[str, Any] | None:
    """The section of analysis_summary.json: per strategy its metrics on the clean hold-out, per shift and per
    corruption family and severity; the robustness comparisons; each strategy's operating rules side by side.
    `finals`: each strategy's final metrics (their operating rules, and the gate's refusals on the clean hold-out)."""
    if not shifted:
        return None
    first = next(iter(shifted.values()))
    shifts = first.shifts
    labels = first.per_shift[shifts[0]].labels
    section: dict[str, Any] = {
        "shifts": shifts,
        "n_images": len(labels),
        "common_sensitivity": COMMON_SENSITIVITY,
        "model": "fold-ensemble: mean calibrated probability of the fold models, at the mean of their thresholds",
        "strategies": {},
        "comparisons": [],
        "operating_rules": {
            s: final["operating_rules"] for s, final in finals.items() if (final or {}).get("operating_rules")
        },
    }
    for strategy, found in shifted.items():
        if found.shifts != shifts or any(not np.array_equal(p.labels, labels) for p in found.per_shift.values()):
            continue  # another run's shifts or images: not comparable
        per_shift = {shift: set_metrics(labels, found.per_shift[shift], found.refused[shift]) for shift in shifts}
        families: dict[str, list[dict[str, Any]]] = {}
        for shift, metrics in per_shift.items():
            families.setdefault(family_of(shift), []).append(metrics)
        clean = set_metrics(labels, holdout[strategy], None) if strategy in holdout else None
        if clean is not None:  # the fold models' mean, as the trainer measured it
            clean["refused"] = (((finals.get(strategy) or {}).get("shifted") or {}).get("holdout") or {}).get("refused")
        entry = {
            "holdout": clean,
            "per_shift": per_shift,
            "families": {name: _mean(members) for name, members in families.items()},
            "mean": _mean(list(per_shift.values())),
            "worst": min(per_shift, key=lambda shift: per_shift[shift]["auroc"]),
        }
        section["strategies"][strategy] = entry
    usable = section["strategies"]
    for reference in references:
        for candidate in candidates:
            if reference in usable and candidate in usable and candidate != reference:
                tests = compare_robustness(shifted[reference], shifted[candidate], labels, seed, n_resamples)
                section["comparisons"].append({"strategy": candidate, "reference": reference, "tests": tests})
    flat = [(c, m) for c in section["comparisons"] for m in ROBUSTNESS_METRICS]
    for (comparison, metric), adjusted in zip(flat, st.holm_adjust([c["tests"][m]["p"] for c, m in flat]), strict=True):
        comparison["tests"][metric]["p_holm"] = adjusted
    log.info("estimate under shift: %d strategies on %d shifts of %d images", len(usable), len(shifts), len(labels))
    return section


def _mean(members: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        name: (None if any(m[name] is None for m in members) else float(np.mean([m[name] for m in members])))
        for name in members[0]
    }


LABELS = {"auroc": "AUROC", "specificity_at_sensitivity": "specificity at sensitivity 0.95"}


def render_shift(section: dict[str, Any] | None) -> list[str]:
    """The report's section: hold-out beside the shifts per strategy, the robustness verdict, the operating rules."""
    title = "The estimate under shift: MedMNIST-C corruptions of the hold-out"
    lines = [title, "-" * len(title)]
    if section is None:
        return lines + ["not scored (see 'Skipped').", ""]
    severities = sorted({shift.partition("@")[2] for shift in section["shifts"]})
    lines += [
        "The hold-out above is carved from the same pool the models learn from, so it overstates what a user gets.",
        f"Here the same {section['n_images']} images are scored again under {len(section['shifts'])} reproducible "
        f"shifts: each of MedMNIST-C's {len(CORRUPTIONS)} corruptions",
        f"of chest X-rays at severity {', '.join(severities)} (noise, JPEG, pixelation, blur, brightness, contrast, "
        "gamma). They stand in for",
        "another site's acquisition and processing; they are not a test split from one, and a model good here can",
        "still fail elsewhere. Each strategy is its fold-ensemble: the mean calibrated probability of its fold models",
        "at the mean of their thresholds; acc/sens/spec at that operating point, spec@0.95 at sensitivity 0.95 (a",
        "common operating point), 'refused': the real radiographs the plausibility gate turned away (mean over folds).",
        f"{'':<34}{'AUROC':>7}{'acc':>7}{'sens':>7}{'spec':>7}{'spec@0.95':>10}{'refused':>9}",
    ]

    def row(name: str, metrics: dict[str, Any]) -> str:
        def cell(value: float | None, width: int, percent: bool = False) -> str:
            if value is None:
                return f"{'n/a':>{width}}"
            return f"{value:>{width}.1%}" if percent else f"{value:>{width}.3f}"

        return (
            f"  {name:<32}{cell(metrics['auroc'], 7)}{cell(metrics['accuracy'], 7)}{cell(metrics['sensitivity'], 7)}"
            f"{cell(metrics['specificity'], 7)}{cell(metrics['specificity_at_sensitivity'], 10)}"
            f"{cell(metrics['refused'], 9, percent=True)}"
        )

    for strategy, entry in section["strategies"].items():
        lines.append(f"{strategy}:")
        if entry["holdout"] is not None:
            lines.append(row("hold-out (clean)", entry["holdout"]))
        lines.append(row(f"mean of the {len(entry['per_shift'])} shifts", entry["mean"]))
        for family, metrics in sorted(entry["families"].items()):
            lines.append(row(family, metrics))
        lines.append(row(f"worst: {entry['worst']}", entry["per_shift"][entry["worst"]]))
    if section["comparisons"]:
        lines.append(
            "Does augmentation change robustness? Candidate - reference, averaged over the shifts; paired stratified"
        )
        lines.append(
            "bootstrap of the images (the same draw for every shift), Holm-adjusted over "
            f"{2 * len(section['comparisons'])} tests, minimum detectable effect at 80% power:"
        )
    for comparison in section["comparisons"]:
        lines.append(f"  {comparison['strategy']} vs {comparison['reference']}:")
        for metric, test in comparison["tests"].items():
            mde = "n/a" if test["mde"] is None else f"{test['mde']:.3f}"
            verdict = "differs" if test["p_holm"] < st.ALPHA else "no detectable difference"
            lines.append(
                f"    {LABELS[metric]:<34} {test['reference']:.3f} -> {test['candidate']:.3f}: "
                f"{test['difference']:+.3f} (95% CI {test['ci95'][0]:+.3f} to {test['ci95'][1]:+.3f}); "
                f"p = {test['p']:.3g}, Holm {test['p_holm']:.3g}: {verdict} (detectable: {mde})"
            )
    rules = section["operating_rules"]
    if rules:
        lines.append(
            "Operating rules side by side (each threshold chosen on the same pooled out-of-fold validation predictions;"
        )
        lines.append("the fold models' mean accuracy / sensitivity / specificity):")
        for strategy, compared in rules.items():
            lines.append(f"  {strategy}:")
            for rule, entry in compared.items():
                held = entry["holdout"]
                text = (
                    f"    {rule:<17}{'(in force) ' if entry['in_force'] else ' ' * 11}"
                    f"threshold {entry['threshold']:.3f}"
                    f"  hold-out {held['accuracy']:.3f} / {held['sensitivity']:.3f} / {held['specificity']:.3f}"
                )
                if entry.get("shifted_mean"):
                    shifted, worst = entry["shifted_mean"], entry["shifted_worst"]
                    text += (
                        f"  under shift {shifted['accuracy']:.3f} / {shifted['sensitivity']:.3f} / "
                        f"{shifted['specificity']:.3f}, worst ({worst['shift']}) {worst['accuracy']:.3f}"
                    )
                lines.append(text)
    return lines + [""]
