"""shared.stats against published reference values and independent computations.

DeLong: pROC's own test suite and documentation on its aSAH data (Robin et al. 2011, BMC Bioinformatics 12:77):
tests/testthat/test-roc.test.R of pROC (https://rdrr.io/cran/pROC/src/tests/testthat/test-roc.test.R) expects
roc.test(wfns, s100b) Z = 2.20898359144091, p = 0.0271757822291882, CI [0.0104061769564846, 0.174214419249478]
and roc.test(wfns, ndka) Z = 2.79777591868904, p = 0.00514557970691098, CI [0.0634011709339876, 0.3600405634833566];
pROC's documented ci.auc(aSAH$outcome, aSAH$s100b) prints "0.7314, 95% CI: 0.6301-0.8326 (DeLong)".
The aSAH columns below are data/aSAH.RData of github.com/xrobin/pROC (113 patients; outcome Poor = 1).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from shared import stats

POOR = "".join(
    (
        "000011010010110010111010000000001001101100000000011000100010",
        "10011101101111000110100000010000000000001111110001000",
    )
)
WFNS = "".join(
    (
        "111132541252551252252111121211342145414255112411255212512221",
        "51125214524414121421232421451154221113125225552445111",
    )
)
S100B = (
    "0.13 0.14 0.1 0.04 0.13 0.1 0.47 0.16 0.18 0.1 0.12 0.1 0.44 0.71 0.04 0.08 0.49 0.04 0.07 0.33 0.09 0.09 0.07 "
    "0.11 0.07 0.17 0.07 0.11 0.13 0.19 0.05 0.16 0.41 0.14 0.34 0.35 0.48 0.09 0.96 0.25 0.5 0.46 0.16 0.07 0.43 0.45 "
    "0.11 0.08 0.09 0.86 0.52 0.08 0.06 0.13 2.07 0.1 0.14 0.15 0.07 0.06 0.77 0.05 0.09 0.3 0.03 0.09 0.04 0.23 0.7 "
    "0.09 0.27 0.71 0.08 0.26 0.08 0.16 0.09 0.13 0.1 0.08 0.11 0.33 0.11 0.28 0.07 0.1 0.32 0.22 0.07 0.05 0.24 0.38 "
    "0.1 0.15 0.08 0.14 0.1 0.07 0.04 0.19 0.56 0.14 0.58 0.32 0.82 0.74 0.15 0.47 0.17 0.44 0.15 0.5 0.48"
)
NDKA = (
    "3.01 8.54 8.09 10.42 17.4 12.75 6.0 13.2 15.54 6.01 15.96 17.86 5.18 8.9 13.41 20.75 11.6 16.11 32.37 54.82 "
    "32.41 49.94 40.34 9.47 6.29 12.53 6.54 6.3 80.3 12.8 9.8 9.81 9.85 18.21 5.03 14.04 21.93 8.02 7.42 8.38 6.59 "
    "9.63 13.12 7.96 14.34 41.43 7.63 7.06 12.59 13.56 3.87 9.44 7.66 12.98 419.19 27.19 22.27 9.95 21.22 11.73 10.4 "
    "58.83 6.39 11.09 12.22 13.67 17.21 22.63 12.9 9.7 21.57 8.23 72.57 15.54 10.51 10.6 14.57 5.19 9.63 4.61 21.48 "
    "17.3 12.71 9.44 11.07 19.46 10.83 5.37 11.97 7.75 9.83 10.55 28.49 8.53 12.57 12.9 46.83 11.68 12.67 9.01 9.57 "
    "34.06 11.72 14.26 47.61 11.67 24.58 10.33 13.87 15.89 22.43 6.79 13.45"
)
Y = np.array([int(c) for c in POOR])
MARKERS = {
    "wfns": np.array([float(c) for c in WFNS]),
    "s100b": np.array([float(v) for v in S100B.split()]),
    "ndka": np.array([float(v) for v in NDKA.split()]),
}


def test_asah_data_is_pROCs() -> None:
    assert len(Y) == 113 and Y.sum() == 41
    assert all(len(values) == 113 for values in MARKERS.values())


@pytest.mark.parametrize(
    ("reference", "z", "p", "ci"),
    [
        ("s100b", 2.20898359144091, 0.0271757822291882, (0.0104061769564846, 0.174214419249478)),
        ("ndka", 2.79777591868904, 0.00514557970691098, (0.0634011709339876, 0.3600405634833566)),
    ],
)
def test_delong_matches_pROC_roc_test(reference: str, z: float, p: float, ci: tuple[float, float]) -> None:
    result = stats.delong_test(Y, MARKERS[reference], MARKERS["wfns"])
    assert result.z == pytest.approx(z, rel=1e-9)
    assert result.p == pytest.approx(p, rel=1e-9)
    assert result.ci95 == pytest.approx(ci, rel=1e-9)
    assert result.auroc_candidate == pytest.approx(0.8237, abs=5e-5)  # pROC prints 0.8237 for wfns
    assert result.difference == pytest.approx(result.auroc_candidate - result.auroc_reference)


def test_delong_is_antisymmetric_and_identical_curves_give_p_one() -> None:
    forward = stats.delong_test(Y, MARKERS["s100b"], MARKERS["ndka"])
    backward = stats.delong_test(Y, MARKERS["ndka"], MARKERS["s100b"])
    assert forward.z == pytest.approx(-backward.z) and forward.p == pytest.approx(backward.p)
    same = stats.delong_test(Y, MARKERS["wfns"], MARKERS["wfns"])
    assert (same.difference, same.z, same.p) == (0.0, 0.0, 1.0)


def test_single_auroc_ci_matches_pROC_ci_auc() -> None:
    auc, var = stats.auroc_variance(Y, MARKERS["s100b"])
    half = 1.959963984540054 * math.sqrt(var)
    assert round(auc, 4) == 0.7314
    assert (round(auc - half, 4), round(auc + half, 4)) == (0.6301, 0.8326)


def structural_components_variance(y: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """DeLong et al. (1988) written out: psi(x, y) = 1, 1/2, 0 over the full m x n comparison matrix."""
    pos, neg = scores[y == 1], scores[y == 0]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    return float(psi.mean()), float(v10.var(ddof=1) / len(pos) + v01.var(ddof=1) / len(neg))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_variance_equals_the_structural_components_by_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(23, int), np.zeros(31, int)]
    scores = np.round(rng.normal(size=54) + 0.8 * y, 1)  # rounded: many ties
    assert stats.auroc_variance(y, scores) == pytest.approx(structural_components_variance(y, scores), rel=1e-12)
    for name, values in MARKERS.items():
        assert stats.auroc_variance(Y, values) == pytest.approx(structural_components_variance(Y, values)), name


def test_hanley_mcneil_variance_is_the_sampling_variance_for_exponential_scores() -> None:
    """Hanley & McNeil's Q1, Q2 are exact when both classes' scores are exponential: negatives Exp(1), positives
    Exp(rate 1/4) give AUROC 1 / (1 + 1/4) = 0.8. 4000 simulated hold-outs of 50 + 50 images: the empirical variance
    of the AUROC agrees within 8% (its Monte Carlo error is about 2%)."""
    rng = np.random.default_rng(0)
    pos = rng.exponential(4.0, size=(4000, 50))
    neg = rng.exponential(1.0, size=(4000, 50))
    ranks = scipy_stats.rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    aucs = (ranks[:, :50].sum(axis=1) - 50 * 51 / 2) / 2500
    assert aucs.mean() == pytest.approx(0.8, abs=0.003)
    assert stats.hanley_mcneil_variance(0.8, 50, 50) == pytest.approx(aucs.var(ddof=1), rel=0.08)


def test_mcnemar_chi_square_on_agrestis_table() -> None:
    """Agresti (2002, Categorical Data Analysis, Table 10.1): 150 and 86 discordant pairs of 1600; the
    continuity-corrected statistic is (|150 - 86| - 1)^2 / 236."""
    ref = np.r_[np.ones(794 + 150, bool), np.zeros(86 + 570, bool)]
    cand = np.r_[np.ones(794, bool), np.zeros(150, bool), np.ones(86, bool), np.zeros(570, bool)]
    result = stats.mcnemar_test(ref, cand)
    assert (result["only_reference"], result["only_candidate"]) == (150, 86)
    assert result["method"] == "chi-square, continuity-corrected"
    assert result["p"] == pytest.approx(scipy_stats.chi2.sf(63**2 / 236, df=1), rel=1e-9)
    assert result["difference"] == pytest.approx((86 - 150) / 1600)


def test_mcnemar_exact_with_few_discordant_pairs() -> None:
    ref = np.r_[np.ones(40, bool), np.ones(7, bool), np.zeros(2, bool), np.zeros(11, bool)]
    cand = np.r_[np.ones(40, bool), np.zeros(7, bool), np.ones(2, bool), np.zeros(11, bool)]
    result = stats.mcnemar_test(ref, cand)
    assert result["method"] == "exact binomial"
    assert result["p"] == pytest.approx(scipy_stats.binomtest(2, 9, 0.5).pvalue, rel=1e-9)
    assert stats.mcnemar_test(ref, ref)["p"] == 1.0


def test_paired_metric_tests_split_positives_and_negatives() -> None:
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    ref = np.array([1, 1, 0, 0, 0, 0, 1, 1])
    cand = np.array([1, 1, 1, 1, 1, 1, 1, 1])
    tests = stats.paired_metric_tests(y, ref, cand)
    assert tests["sensitivity"]["reference"] == 0.5 and tests["sensitivity"]["candidate"] == 1.0
    assert tests["specificity"]["reference"] == 0.5 and tests["specificity"]["candidate"] == 0.0
    assert tests["accuracy"]["n"] == 8 and tests["sensitivity"]["n"] == 4


def scores_of_two_models(seed: int = 0, n: int = 300) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.7).astype(int)
    shared_part = rng.normal(size=n)
    a = 1 / (1 + np.exp(-(1.5 * y - 0.75 + shared_part + 0.5 * rng.normal(size=n))))
    b = 1 / (1 + np.exp(-(1.8 * y - 0.9 + shared_part + 0.5 * rng.normal(size=n))))
    return y, a, b


def test_bootstrap_intervals_stay_in_bounds_and_agree_with_delong() -> None:
    y, a, b = scores_of_two_models()
    found = stats.bootstrap_metrics(y, a, (a >= 0.5).astype(int), seed=3)
    for name in stats.HOLDOUT_METRICS:
        low, high = found[name]["ci95"]
        assert 0.0 <= low <= found[name]["value"] <= high <= 1.0, name
    # A stratified bootstrap of the AUROC and DeLong's variance estimate the same spread (within 15%).
    auc, var = stats.auroc_variance(y, a)
    assert found["auroc"]["value"] == pytest.approx(auc)
    width = found["auroc"]["ci95"][1] - found["auroc"]["ci95"][0]
    assert width == pytest.approx(2 * 1.96 * math.sqrt(var), rel=0.15)
    assert stats.bootstrap_metrics(y, a, (a >= 0.5).astype(int), seed=3) == found  # seeded


def test_bootstrap_is_stratified_and_bounded_on_a_perfect_model() -> None:
    y = np.array([1] * 20 + [0] * 5)
    positives, negatives = stats.stratified_resamples(y, n_resamples=50, seed=0)
    assert (y[positives] == 1).all() and (y[negatives] == 0).all()
    perfect = stats.bootstrap_metrics(y, y.astype(float), y, n_resamples=200)
    assert all(perfect[name]["ci95"] == [1.0, 1.0] for name in stats.HOLDOUT_METRICS)


def test_paired_bootstrap_differences_agree_with_delong() -> None:
    y, a, b = scores_of_two_models(seed=1)
    diffs = stats.bootstrap_differences(y, (a, (a >= 0.5).astype(int)), (b, (b >= 0.5).astype(int)), seed=0)
    delong = stats.delong_test(y, a, b)
    assert diffs["auroc"]["value"] == pytest.approx(delong.difference)
    width = diffs["auroc"]["ci95"][1] - diffs["auroc"]["ci95"][0]
    assert width == pytest.approx(delong.ci95[1] - delong.ci95[0], rel=0.15)
    for name in stats.HOLDOUT_METRICS:
        low, high = diffs[name]["ci95"]
        assert -1.0 <= low <= high <= 1.0


def test_mde_auroc_is_the_delong_se_times_2_8() -> None:
    result = stats.delong_test(Y, MARKERS["s100b"], MARKERS["wfns"])
    z_sum = scipy_stats.norm.ppf(0.975) + scipy_stats.norm.ppf(0.8)  # 2.8016
    assert stats.mde_auroc(Y, MARKERS["s100b"], MARKERS["wfns"]) == pytest.approx(z_sum * result.se)
    auc = stats.auroc_variance(Y, MARKERS["s100b"])[0]
    unpaired = z_sum * math.sqrt(2 * stats.hanley_mcneil_variance(auc, 41, 72))
    assert stats.mde_auroc(Y, MARKERS["s100b"]) == pytest.approx(unpaired)


def test_mde_paired_proportion_has_80_percent_power_by_simulation() -> None:
    """Connor's formula solved for delta, checked by simulating McNemar's test (uncorrected z, as Connor's normal
    approximation) on 20000 hold-outs of 600 images with 10% discordant pairs: power 0.80 within 0.02."""
    n, psi = 600, 0.10
    delta = stats.mde_paired_proportion(n, psi)
    assert delta is not None and 0 < delta < psi
    assert stats.connor_sample_size(psi, delta) == pytest.approx(n)
    rng = np.random.default_rng(0)
    counts = rng.multinomial(n, [(psi + delta) / 2, (psi - delta) / 2, 1 - psi], size=20000)
    b, c = counts[:, 0], counts[:, 1]
    z = (b - c) / np.sqrt(np.maximum(b + c, 1))
    assert np.mean(np.abs(z) > scipy_stats.norm.ppf(0.975)) == pytest.approx(0.80, abs=0.02)
    assert stats.mde_paired_proportion(10, 0.05) is None  # too few discordant pairs to detect anything
    assert stats.mde_paired_proportion(600, 0.0) is None


def test_corrected_resampled_ttest() -> None:
    d = [0.01, 0.02, 0.03, 0.00, 0.04]
    plain = stats.corrected_resampled_ttest(d, n_train=100, n_test=0)
    reference = scipy_stats.ttest_1samp(d, 0.0)
    assert plain["t"] == pytest.approx(reference.statistic) and plain["p"] == pytest.approx(reference.pvalue)
    corrected = stats.corrected_resampled_ttest(d, n_train=80, n_test=20)
    # t shrinks by sqrt((1/J) / (1/J + n_test/n_train)) = sqrt(0.2 / 0.45)
    assert corrected["t"] == pytest.approx(reference.statistic * math.sqrt(0.2 / 0.45))
    assert corrected["p"] == pytest.approx(2 * scipy_stats.t.sf(corrected["t"], df=4))
    assert corrected["p"] > plain["p"]
    assert stats.corrected_resampled_ttest([0.1], 10, 2)["p"] is None
