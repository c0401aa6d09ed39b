"""Tests with power on the same images, and the power of the design: DeLong's test for two correlated AUROCs,
McNemar's test for paired accuracy / sensitivity / specificity, stratified bootstrap intervals, the minimum detectable
effect at 80% power, and the Nadeau-Bengio corrected resampled t-test for cross-validation spreads.

Labels are 0 / 1 (1 = pneumonia, the positive class); a higher score means more likely positive. Every function
takes the scores of two models on the same images, paired image by image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import optimize
from scipy import stats as scipy_stats
from statsmodels.stats.contingency_tables import mcnemar

ALPHA = 0.05
POWER = 0.80
BOOTSTRAP_RESAMPLES = 2000
# McNemar: the exact binomial test below this many discordant pairs, else chi-square with continuity correction.
MCNEMAR_EXACT_BELOW = 25
HOLDOUT_METRICS = ("auroc", "accuracy", "sensitivity", "specificity")


def _labels(y_true: Sequence[int]) -> np.ndarray:
    y = np.asarray(y_true, dtype=np.int64)
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    if y.sum() == 0 or y.sum() == len(y):
        raise ValueError("need both classes: positives and negatives")
    return y


# ------------------------------------------------------------------------------------------------------ DeLong


def delong_components(y_true: Sequence[int], scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUROCs (k,) and their DeLong covariance matrix (k, k) for k score vectors on the same images.

    The fast midrank form of Sun & Xu (2014, IEEE Signal Processing Letters 21:1389): the structural components
    V10 (per positive) and V01 (per negative) of DeLong, DeLong & Clarke-Pearson (1988, Biometrics 44:837) come from
    the midranks of the positives, of the negatives and of all images; ties count one half.
    Cov = S10 / m + S01 / n with m positives and n negatives.
    """
    y = _labels(y_true)
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    if scores.shape[1] != len(y):
        raise ValueError(f"need one score per image: {scores.shape[1]} scores, {len(y)} labels")
    pos, neg = scores[:, y == 1], scores[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    rank_pos = scipy_stats.rankdata(pos, axis=1)
    rank_neg = scipy_stats.rankdata(neg, axis=1)
    rank_all = scipy_stats.rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    aucs = (rank_all[:, :m].sum(axis=1) - m * (m + 1) / 2.0) / (m * n)
    v10 = (rank_all[:, :m] - rank_pos) / n  # per positive: share of negatives it outranks
    v01 = 1.0 - (rank_all[:, m:] - rank_neg) / m  # per negative: share of positives that outrank it
    s10 = np.atleast_2d(np.cov(v10)) if m > 1 else np.zeros((len(scores), len(scores)))
    s01 = np.atleast_2d(np.cov(v01)) if n > 1 else np.zeros((len(scores), len(scores)))
    return aucs, s10 / m + s01 / n


def auroc_variance(y_true: Sequence[int], scores: Sequence[float]) -> tuple[float, float]:
    """(AUROC, DeLong variance) of one score vector."""
    aucs, cov = delong_components(y_true, np.asarray(scores, dtype=np.float64)[None, :])
    return float(aucs[0]), float(cov[0, 0])


@dataclass(frozen=True)
class DeLongResult:
    """Candidate minus reference AUROC on the same images, two-sided."""

    auroc_reference: float
    auroc_candidate: float
    difference: float
    se: float
    z: float | None
    p: float
    ci95: tuple[float, float]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ci95": list(self.ci95)}


def delong_test(
    y_true: Sequence[int], reference: Sequence[float], candidate: Sequence[float], alpha: float = ALPHA
) -> DeLongResult:
    """DeLong's test of AUROC(candidate) - AUROC(reference), both scored on the same images.

    z = d / se with se = sqrt(var_c + var_r - 2 cov); p two-sided from the normal; CI d +- z_(1-alpha/2) se. Two
    identical score vectors give d = 0, z = 0 and p = 1 (as pROC's roc.test).
    """
    aucs, cov = delong_components(y_true, np.vstack([np.asarray(reference), np.asarray(candidate)]))
    d = float(aucs[1] - aucs[0])
    se = math.sqrt(max(float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]), 0.0))
    if se == 0.0:
        z, p = (0.0, 1.0) if d == 0.0 else (None, 0.0)
    else:
        z = d / se
        p = float(2 * scipy_stats.norm.sf(abs(z)))
    half = float(scipy_stats.norm.ppf(1 - alpha / 2)) * se
    return DeLongResult(float(aucs[0]), float(aucs[1]), d, se, z, p, (d - half, d + half))


def hanley_mcneil_variance(auc: float, n_positive: int, n_negative: int) -> float:
    """Variance of an AUROC estimate from its value and the class counts (Hanley & McNeil 1982, Radiology 143:29,
    eq. 2 with Q1 = A / (2 - A), Q2 = 2 A^2 / (1 + A), exact for exponentially distributed scores)."""
    a = auc
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    return (a * (1 - a) + (n_positive - 1) * (q1 - a * a) + (n_negative - 1) * (q2 - a * a)) / (n_positive * n_negative)


# ----------------------------------------------------------------------------------------------------- McNemar


def mcnemar_test(correct_reference: Sequence[bool], correct_candidate: Sequence[bool]) -> dict[str, Any]:
    """McNemar's test of paired correctness (accuracy; or sensitivity on the positives, specificity on the
    negatives): statsmodels' exact binomial test when there are fewer than MCNEMAR_EXACT_BELOW discordant pairs,
    else its chi-square with continuity correction (McNemar 1947, Psychometrika 12:153; Edwards 1948).

    Returns n, the rates of both models, difference (candidate - reference), the discordant counts
    (only_reference, only_candidate: the images only that model got right), method and p.
    """
    ref = np.asarray(correct_reference, dtype=bool)
    cand = np.asarray(correct_candidate, dtype=bool)
    if len(ref) != len(cand) or len(ref) == 0:
        raise ValueError(f"need paired, non-empty outcomes: {len(ref)} and {len(cand)}")
    table = [[int(np.sum(ref & cand)), int(np.sum(ref & ~cand))], [int(np.sum(~ref & cand)), int(np.sum(~ref & ~cand))]]
    only_ref, only_cand = table[0][1], table[1][0]
    exact = only_ref + only_cand < MCNEMAR_EXACT_BELOW
    p = 1.0 if only_ref + only_cand == 0 else float(mcnemar(table, exact=exact, correction=True).pvalue)
    return {
        "n": len(ref),
        "reference": float(ref.mean()),
        "candidate": float(cand.mean()),
        "difference": float(cand.mean() - ref.mean()),
        "only_reference": only_ref,
        "only_candidate": only_cand,
        "method": "exact binomial" if exact else "chi-square, continuity-corrected",
        "p": min(p, 1.0),
    }


def paired_metric_tests(
    y_true: Sequence[int], decision_reference: Sequence[int], decision_candidate: Sequence[int]
) -> dict[str, dict[str, Any]]:
    """McNemar's test of accuracy (all images), sensitivity (positives) and specificity (negatives), each model at
    its own decisions (operating point)."""
    y = _labels(y_true)
    ref = np.asarray(decision_reference, dtype=np.int64) == y
    cand = np.asarray(decision_candidate, dtype=np.int64) == y
    return {
        "accuracy": mcnemar_test(ref, cand),
        "sensitivity": mcnemar_test(ref[y == 1], cand[y == 1]),
        "specificity": mcnemar_test(ref[y == 0], cand[y == 0]),
    }


# --------------------------------------------------------------------------------------------------- bootstrap


def stratified_resamples(
    y_true: Sequence[int], n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(positive indices (B, m), negative indices (B, n)): each resample draws the m positives among the positives
    and the n negatives among the negatives, with replacement, so the class counts stay those of the data."""
    y = _labels(y_true)
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    return (
        pos[rng.integers(0, len(pos), size=(n_resamples, len(pos)))],
        neg[rng.integers(0, len(neg), size=(n_resamples, len(neg)))],
    )


def auroc_rows(pos_scores: np.ndarray, neg_scores: np.ndarray) -> np.ndarray:
    """AUROC of each row: pos (B, m) against neg (B, n), midranks (ties count one half)."""
    m, n = pos_scores.shape[1], neg_scores.shape[1]
    ranks = scipy_stats.rankdata(np.concatenate([pos_scores, neg_scores], axis=1), axis=1)
    return (ranks[:, :m].sum(axis=1) - m * (m + 1) / 2.0) / (m * n)


def _metric_rows(
    probability: np.ndarray, decision: np.ndarray, pos: np.ndarray, neg: np.ndarray
) -> dict[str, np.ndarray]:
    """Each hold-out metric for each resample (rows of positive and negative indices)."""
    tp = decision[pos].sum(axis=1)
    tn = (1 - decision[neg]).sum(axis=1)
    m, n = pos.shape[1], neg.shape[1]
    return {
        "auroc": auroc_rows(probability[pos], probability[neg]),
        "accuracy": (tp + tn) / (m + n),
        "sensitivity": tp / m,
        "specificity": tn / n,
    }


def holdout_metrics(y_true: Sequence[int], probability: Sequence[float], decision: Sequence[int]) -> dict[str, float]:
    """AUROC of the probabilities; accuracy, sensitivity and specificity of the decisions."""
    y = _labels(y_true)
    pos, neg = np.flatnonzero(y == 1)[None, :], np.flatnonzero(y == 0)[None, :]
    rows = _metric_rows(np.asarray(probability, np.float64), np.asarray(decision, np.int64), pos, neg)
    return {name: float(values[0]) for name, values in rows.items()}


def _percentile_ci(values: np.ndarray, alpha: float) -> list[float]:
    return [float(np.quantile(values, alpha / 2)), float(np.quantile(values, 1 - alpha / 2))]


def bootstrap_metrics(
    y_true: Sequence[int],
    probability: Sequence[float],
    decision: Sequence[int],
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    alpha: float = ALPHA,
) -> dict[str, dict[str, Any]]:
    """Each hold-out metric with its stratified percentile bootstrap interval (Efron & Tibshirani 1993, ch. 13):
    {metric: {"value", "ci95"}}. A percentile of values in [0, 1] stays in [0, 1]."""
    point = holdout_metrics(y_true, probability, decision)
    pos, neg = stratified_resamples(y_true, n_resamples, seed)
    rows = _metric_rows(np.asarray(probability, np.float64), np.asarray(decision, np.int64), pos, neg)
    return {name: {"value": point[name], "ci95": _percentile_ci(rows[name], alpha)} for name in HOLDOUT_METRICS}


def bootstrap_differences(
    y_true: Sequence[int],
    reference: tuple[Sequence[float], Sequence[int]],
    candidate: tuple[Sequence[float], Sequence[int]],
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    alpha: float = ALPHA,
) -> dict[str, dict[str, Any]]:
    """Paired stratified bootstrap of candidate - reference for each hold-out metric: both models are scored on
    the same resampled images. reference and candidate are (probability, decision); {metric: {"value", "ci95"}}."""
    ref_point = holdout_metrics(y_true, *reference)
    cand_point = holdout_metrics(y_true, *candidate)
    pos, neg = stratified_resamples(y_true, n_resamples, seed)
    ref_rows = _metric_rows(np.asarray(reference[0], np.float64), np.asarray(reference[1], np.int64), pos, neg)
    cand_rows = _metric_rows(np.asarray(candidate[0], np.float64), np.asarray(candidate[1], np.int64), pos, neg)
    return {
        name: {
            "value": cand_point[name] - ref_point[name],
            "ci95": _percentile_ci(cand_rows[name] - ref_rows[name], alpha),
        }
        for name in HOLDOUT_METRICS
    }


# ------------------------------------------------------------------------------------------------------- power


def _z_sum(alpha: float, power: float) -> float:
    return float(scipy_stats.norm.ppf(1 - alpha / 2) + scipy_stats.norm.ppf(power))


def mde_from_se(se: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest true difference a two-sided z-test with standard error `se` detects with the given power:
    (z_(1-alpha/2) + z_power) se (e.g. Obuchowski 1998, Radiology 206:157, for AUROC differences)."""
    return _z_sum(alpha, power) * se


def mde_auroc(
    y_true: Sequence[int], reference: Sequence[float], candidate: Sequence[float] | None = None, **kwargs: float
) -> float:
    """Minimum detectable AUROC difference on these images: from the DeLong SE of the observed difference (its
    correlation included) when both models' scores are given, else from the Hanley-McNeil variance at the reference
    AUROC with the two models' estimates independent (a conservative bound)."""
    if candidate is not None:
        return mde_from_se(delong_test(y_true, reference, candidate).se, **kwargs)
    y = _labels(y_true)
    auc, _ = auroc_variance(y, reference)
    var = hanley_mcneil_variance(auc, int(y.sum()), int((y == 0).sum()))
    return mde_from_se(math.sqrt(2 * var), **kwargs)


def connor_sample_size(discordance: float, difference: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """Pairs needed to detect a difference of paired proportions `difference` (p10 - p01) when a share
    `discordance` (p10 + p01) of the pairs disagree, McNemar's test two-sided (Connor 1987, Biometrics 43:207):
    n = (z_(1-alpha/2) sqrt(psi) + z_power sqrt(psi - delta^2))^2 / delta^2."""
    za, zb = float(scipy_stats.norm.ppf(1 - alpha / 2)), float(scipy_stats.norm.ppf(power))
    psi, delta = discordance, abs(difference)
    return (za * math.sqrt(psi) + zb * math.sqrt(psi - delta * delta)) ** 2 / (delta * delta)


def mde_paired_proportion(n: int, discordance: float, alpha: float = ALPHA, power: float = POWER) -> float | None:
    """The smallest difference of paired proportions (accuracy, sensitivity, specificity) that McNemar's test on n
    pairs with this discordance rate detects with the given power: Connor's (1987) sample size solved for delta
    (0 < delta <= discordance). None when even delta = discordance is not detectable (too few discordant pairs)."""
    if n <= 0 or discordance <= 0:
        return None
    if connor_sample_size(discordance, discordance, alpha, power) > n:
        return None
    return float(
        optimize.brentq(lambda d: connor_sample_size(discordance, d, alpha, power) - n, 1e-12, discordance, xtol=1e-12)
    )


# ------------------------------------------------------------------------------------------ multiple tests, folds


def holm_adjust(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (Holm 1979, Scand J Statist 6:65; step-down, monotone, capped at 1), in the
    input order."""
    adjusted = [0.0] * len(pvalues)
    running = 0.0
    for rank, index in enumerate(np.argsort(pvalues, kind="stable")):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[index]))
        adjusted[index] = running
    return adjusted


def corrected_resampled_ttest(differences: Sequence[float], n_train: int, n_test: int) -> dict[str, Any]:
    """Nadeau & Bengio's (2003, Machine Learning 52:239) corrected resampled t-test of the mean of J paired
    differences from J train/test splits that overlap: t = mean / sqrt((1 / J + n_test / n_train) s^2), J - 1
    degrees of freedom, two-sided. With n_test / n_train = 0 it is the plain one-sample t-test."""
    d = np.asarray(differences, dtype=np.float64)
    j = len(d)
    result: dict[str, Any] = {"n": j, "mean_difference": float(d.mean()) if j else None, "t": None, "p": None}
    if j < 2:
        return result
    var = float(d.var(ddof=1))
    se = math.sqrt((1.0 / j + n_test / n_train) * var)
    half = float(scipy_stats.t.ppf(1 - ALPHA / 2, df=j - 1)) * se
    result["ci95"] = [result["mean_difference"] - half, result["mean_difference"] + half]
    if se > 0:
        result["t"] = result["mean_difference"] / se
        result["p"] = float(2 * scipy_stats.t.sf(abs(result["t"]), df=j - 1))
    return result
