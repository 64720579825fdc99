"""Leaderboard uncertainty: landmark bootstrap, combined intervals, paired tests, Holm, tiers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bctbench.statistics import (
    Comparison,
    Interval,
    bootstrap_metric,
    combined_interval,
    holm,
    landmark_bootstrap_weights,
    min_detectable_difference,
    paired_comparison,
    significantly_best,
    tiers,
)

# reference quantiles (scipy.stats.t.ppf)
T975_DF2 = 4.302652729749462
T975_DF4 = 2.7764451051977934
T975_DF8 = 2.306004135204166
T80_DF4 = 0.9409645772351816
Z975 = 1.959963984540054


# ------------------------------------------------------------------------------------------------------------
# landmark bootstrap
# ------------------------------------------------------------------------------------------------------------


def test_weights_shape_integer_and_constant_within_landmark():
    groups = np.array([7, 7, 3, 42, 42, 42, -1, 3, 9])  # arbitrary, non-contiguous ids; 5 landmarks
    w = landmark_bootstrap_weights(groups, n_boot=200, seed=1)
    assert w.shape == (200, groups.size)
    assert w.dtype == np.float64
    assert np.all(w >= 0) and np.array_equal(w, np.round(w))
    ids, first, counts = np.unique(groups, return_index=True, return_counts=True)
    for g in ids:
        cols = w[:, groups == g]
        assert np.all(cols == cols[:, :1])  # one weight per landmark
    # per round, landmark draw counts sum to the number of landmarks
    lm_counts = w[:, first]  # [B, L]
    assert np.all(lm_counts.sum(axis=1) == ids.size)
    # and the query weights sum to the size-weighted draw count
    np.testing.assert_array_equal(w.sum(axis=1), lm_counts @ counts)
    # resampling actually varies between rounds
    assert np.unique(lm_counts, axis=0).shape[0] > 1


def test_weights_deterministic_for_seed():
    groups = np.repeat(np.arange(20), 3)
    a = landmark_bootstrap_weights(groups, n_boot=50, seed=123)
    b = landmark_bootstrap_weights(groups, n_boot=50, seed=123)
    c = landmark_bootstrap_weights(groups, n_boot=50, seed=124)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_weights_draw_frequency_is_uniform():
    # each landmark's expected count per round is 1
    w = landmark_bootstrap_weights(np.arange(10), n_boot=4000, seed=0)
    np.testing.assert_allclose(w.mean(axis=0), 1.0, atol=0.06)


def test_bootstrap_metric_ones_equals_nanmean():
    rng = np.random.default_rng(0)
    ap = rng.random((3, 4, 30))
    ap[rng.random(ap.shape) < 0.2] = np.nan
    out = bootstrap_metric(ap, np.ones((5, 30)))
    assert out.shape == (3, 4, 5)
    np.testing.assert_allclose(out, np.repeat(np.nanmean(ap, axis=-1)[..., None], 5, axis=-1), rtol=1e-12)


def test_bootstrap_metric_matches_slow_loop():
    rng = np.random.default_rng(1)
    nq = 25
    groups = rng.integers(0, 8, size=nq)
    w = landmark_bootstrap_weights(groups, n_boot=40, seed=2)
    ap = rng.random((3, nq))
    ap[rng.random(ap.shape) < 0.3] = np.nan
    ap[2, :] = np.nan
    ap[2, 0] = 0.5  # one scored query: some rounds put zero weight on it
    out = bootstrap_metric(ap, w)
    assert out.shape == (3, 40)
    ref = np.full((3, 40), np.nan)
    for k in range(3):
        for b in range(40):
            num = den = 0.0
            for i in range(nq):
                if not np.isnan(ap[k, i]):
                    num += w[b, i] * ap[k, i]
                    den += w[b, i]
            if den > 0:
                ref[k, b] = num / den
    assert np.isnan(out[2]).any() and not np.isnan(out[2]).all()
    np.testing.assert_allclose(out, ref, rtol=1e-12, equal_nan=True)


def test_bootstrap_metric_shape_mismatch():
    with pytest.raises(ValueError):
        bootstrap_metric(np.zeros((2, 5)), np.ones((3, 4)))


# ------------------------------------------------------------------------------------------------------------
# combined intervals
# ------------------------------------------------------------------------------------------------------------


def test_interval_plain_t_without_boot():
    iv = combined_interval([1.0, 2.0, 3.0])
    half = T975_DF2 * 1 / math.sqrt(3)
    assert isinstance(iv, Interval)
    assert iv.mean == pytest.approx(2.0)
    assert iv.low == pytest.approx(2.0 - half, rel=1e-9)
    assert iv.high == pytest.approx(2.0 + half, rel=1e-9)
    assert iv.half == pytest.approx(half, rel=1e-9)
    assert iv.n == 3 and iv.df == 2
    assert iv.seed_sd == pytest.approx(1.0)
    assert iv.seed_half == pytest.approx(half, rel=1e-9)
    assert math.isnan(iv.test_se)


def test_interval_satterthwaite_hand_example():
    # s = 1, n = 3 -> V_s = 1/3; rounds of the seed-mean are 2 + [-a, 0, a] -> SE = a = 1/sqrt(3)
    a = 1 / math.sqrt(3)
    per_seed = np.array([1.0, 2.0, 3.0])
    boot = per_seed[:, None] + np.array([-a, 0.0, a])[None, :]
    iv = combined_interval(per_seed, boot)
    v = 1 / 3 + 1 / 3
    assert iv.test_se == pytest.approx(a, rel=1e-12)
    assert iv.df == pytest.approx(v**2 * 2 / (1 / 3) ** 2)  # = 8
    assert iv.df == pytest.approx(8.0)
    assert iv.half == pytest.approx(T975_DF8 * math.sqrt(v), rel=1e-9)
    assert iv.seed_half == pytest.approx(T975_DF2 / math.sqrt(3), rel=1e-9)


def test_interval_test_se_uses_seed_mean_of_rounds():
    # anti-correlated per-seed replicates cancel in the seed-mean: SE = 0, interval = plain t interval
    r = np.array([-0.3, 0.1, 0.2, 0.5])
    per_seed = np.array([1.0, 2.0])
    boot = per_seed[:, None] + np.stack([r, -r])
    iv = combined_interval(per_seed, boot)
    plain = combined_interval(per_seed)
    assert iv.test_se == pytest.approx(0.0, abs=1e-12)
    assert iv.df == pytest.approx(1.0)
    assert iv.half == pytest.approx(plain.half, rel=1e-9)


def test_interval_zero_seed_variance_uses_normal():
    per_seed = np.array([0.5, 0.5, 0.5])
    boot = per_seed[:, None] + np.array([-0.1, 0.1])[None, :]
    iv = combined_interval(per_seed, boot)
    se = np.std([0.4, 0.6], ddof=1)
    assert math.isinf(iv.df)
    assert iv.half == pytest.approx(Z975 * se, rel=1e-9)


def test_interval_single_seed_and_empty():
    boot = np.array([[0.4, 0.5, 0.6]])
    iv = combined_interval([0.5], boot)
    assert iv.n == 1 and math.isinf(iv.df)
    assert math.isnan(iv.seed_sd) and math.isnan(iv.seed_half)
    assert iv.half == pytest.approx(Z975 * 0.1, rel=1e-9)  # test-set error only

    iv = combined_interval([0.5])
    assert iv.mean == 0.5 and math.isnan(iv.low) and math.isnan(iv.high) and math.isnan(iv.test_se)

    iv = combined_interval([])
    assert iv.n == 0 and all(math.isnan(x) for x in (iv.mean, iv.low, iv.high, iv.seed_sd, iv.df))


def test_interval_boot_shape_checked():
    with pytest.raises(ValueError):
        combined_interval([1.0, 2.0], np.zeros((3, 4)))


# ------------------------------------------------------------------------------------------------------------
# paired comparisons
# ------------------------------------------------------------------------------------------------------------


def test_paired_verdicts():
    a = np.array([0.50, 0.52, 0.51])
    b = np.array([0.40, 0.41, 0.39])
    better = paired_comparison(a, b)
    assert isinstance(better, Comparison)
    assert better.verdict == "✓" and better.low > 0 and better.p < 0.05 and better.n == 3
    worse = paired_comparison(b, a)
    assert worse.verdict == "✗" and worse.high < 0 and worse.p == pytest.approx(better.p)
    tied = paired_comparison([0.50, 0.40, 0.45], [0.45, 0.46, 0.44])
    assert tied.verdict == "≈" and tied.low < 0 < tied.high and tied.p > 0.05
    nan = paired_comparison([0.5], [0.4])  # one seed, no bootstrap: nothing to say
    assert nan.verdict == "≈" and math.isnan(nan.p)


def test_paired_degenerate_variance():
    same = paired_comparison([0.3, 0.3], [0.3, 0.3])
    assert same.p == 1.0 and same.verdict == "≈"
    shifted = paired_comparison([0.75, 0.5], [0.5, 0.25])  # exact binary fractions
    assert shifted.p == 0.0 and shifted.verdict == "✓"


def test_paired_uses_difference_of_boots():
    # shared test-set noise cancels in the paired difference
    rng = np.random.default_rng(3)
    shared = rng.normal(0, 0.05, size=(3, 100))
    a, b = np.array([0.61, 0.62, 0.60]), np.array([0.50, 0.52, 0.51])
    cmp = paired_comparison(a, b, a[:, None] + shared, b[:, None] + shared)
    plain = paired_comparison(a, b)
    assert cmp.low == pytest.approx(plain.low) and cmp.high == pytest.approx(plain.high)
    with pytest.raises(ValueError):
        paired_comparison(a, b, boot_a=a[:, None] + shared)


def test_paired_p_value_consistent_with_interval():
    rng = np.random.default_rng(4)
    for _ in range(300):
        n = int(rng.choice([2, 3, 5]))
        a = rng.normal(0.5, 0.02, n)
        b = a + rng.normal(rng.normal(0, 0.02), 0.02, n)
        boot_a = a[:, None] + rng.normal(0, 0.01, (n, 30))
        boot_b = b[:, None] + rng.normal(0, 0.01, (n, 30))
        for cmp in (paired_comparison(a, b), paired_comparison(a, b, boot_a, boot_b)):
            assert (cmp.low > 0 or cmp.high < 0) == (cmp.p < 0.05)
            assert (cmp.verdict != "≈") == (cmp.p < 0.05)


# ------------------------------------------------------------------------------------------------------------
# Holm, tiers, winner
# ------------------------------------------------------------------------------------------------------------


def test_holm_hand_example():
    np.testing.assert_array_equal(holm([0.01, 0.04, 0.03, 0.005], 0.05), [True, False, False, True])
    # Bonferroni would reject only 0.005; Holm steps down
    np.testing.assert_array_equal(holm([0.012, 0.005, 0.02], 0.05), [True, True, True])


def test_holm_nan_counts_in_m_and_never_rejected():
    # m = 2 -> first threshold 0.025, so 0.03 is not rejected even though it is < 0.05
    np.testing.assert_array_equal(holm([0.03, np.nan], 0.05), [False, False])
    np.testing.assert_array_equal(holm([0.01, np.nan], 0.05), [True, False])
    assert holm([]).shape == (0,)


def _table_compare(pairs: dict[frozenset, float]):
    calls = []

    def compare(i, j):
        calls.append((i, j))
        return pairs[frozenset((i, j))]

    return compare, calls


def test_tiers_clear_top_tie_group_and_bottom():
    names = ["top", "b", "c", "d", "bottom", "broken"]
    scores = [0.90, 0.70, 0.69, 0.68, 0.20, np.nan]
    p = {}
    for j in (1, 2, 3, 4):
        p[frozenset((0, j))] = 1e-6  # top beats everyone
    p[frozenset((1, 2))] = 0.6
    p[frozenset((1, 3))] = 0.3
    p[frozenset((1, 4))] = 1e-5
    p[frozenset((2, 4))] = 1e-5
    p[frozenset((3, 4))] = 1e-5
    p[frozenset((2, 3))] = 0.9
    compare, calls = _table_compare(p)
    out = tiers(names, scores, compare)
    assert out == {"top": 1, "b": 2, "c": 2, "d": 2, "bottom": 3, "broken": 4}
    assert all(5 not in c for c in calls)  # NaN-scored method never compared


def test_tiers_holm_correction_matters():
    # p = 0.03 for both challengers: uncorrected they'd be separate, with Holm (0.025) they tie with the best
    names = ["a", "b", "c"]
    p = {frozenset((0, 1)): 0.03, frozenset((0, 2)): 0.03, frozenset((1, 2)): 0.5}
    compare, _ = _table_compare(p)
    assert tiers(names, [3.0, 2.0, 1.0], compare) == {"a": 1, "b": 1, "c": 1}


def test_significantly_best():
    names = ["a", "b", "c"]
    clear = {frozenset((0, 1)): 1e-4, frozenset((0, 2)): 1e-4, frozenset((1, 2)): 0.5}
    compare, _ = _table_compare(clear)
    assert significantly_best(names, [0.9, 0.5, 0.4], compare) == "a"
    tied = {frozenset((0, 1)): 0.4, frozenset((0, 2)): 1e-4, frozenset((1, 2)): 1e-4}
    compare, _ = _table_compare(tied)
    assert significantly_best(names, [0.9, 0.85, 0.4], compare) is None
    # equal top scores: no winner regardless of p
    compare, _ = _table_compare(clear)
    assert significantly_best(names, [0.9, 0.9, 0.4], compare) is None
    assert significantly_best(["a", "b"], [0.9, np.nan], compare) is None
    assert significantly_best(["a"], [0.9], compare) is None


def test_tiers_with_paired_comparisons_end_to_end():
    # 5 seeds, shared bootstrap; "x" clearly best, "y"/"z" indistinguishable, "w" clearly worst
    rng = np.random.default_rng(7)
    nq, n = 60, 5
    groups = np.repeat(np.arange(20), 3)
    w = landmark_bootstrap_weights(groups, n_boot=300, seed=0)
    base = rng.random(nq)
    offsets = {"x": 0.15, "y": 0.0, "z": 0.002, "w": -0.2}
    # per-seed shift (training randomness) + per-query noise
    ap = {
        k: np.clip(base + off + rng.normal(0, 0.01, (n, 1)) + rng.normal(0, 0.02, (n, nq)), 0, 1)
        for k, off in offsets.items()
    }
    names = list(ap)
    per_seed = [np.nanmean(ap[k], axis=1) for k in names]
    boots = [bootstrap_metric(ap[k], w) for k in names]
    scores = [ps.mean() for ps in per_seed]

    def compare(i, j):
        return paired_comparison(per_seed[i], per_seed[j], boots[i], boots[j]).p

    out = tiers(names, scores, compare)
    assert out["x"] == 1 and out["y"] == out["z"] == 2 and out["w"] == 3
    assert significantly_best(names, scores, compare) == "x"


# ------------------------------------------------------------------------------------------------------------
# power
# ------------------------------------------------------------------------------------------------------------


def test_min_detectable_difference():
    assert min_detectable_difference(1.0, 5) == pytest.approx((T975_DF4 + T80_DF4) / math.sqrt(5), rel=1e-9)
    assert min_detectable_difference(1.0, 5) == pytest.approx(1.662476, abs=1e-5)
    assert min_detectable_difference(0.02, 5) == pytest.approx(0.02 * 1.662476, rel=1e-5)
    assert math.isnan(min_detectable_difference(1.0, 1))


# ------------------------------------------------------------------------------------------------------------
# rank agreement with a published ordering
# ------------------------------------------------------------------------------------------------------------


def test_kendall_tau_b_matches_scipy_with_and_without_ties() -> None:
    from scipy import stats as sps

    from bctbench.statistics import kendall_tau_b

    rng = np.random.default_rng(3)
    for _ in range(50):
        x = rng.integers(0, 4, 7).astype(float)  # ties
        y = rng.normal(size=7)
        assert kendall_tau_b(x, y) == pytest.approx(sps.kendalltau(x, y).statistic, abs=1e-12)


def test_rank_agreement_exact_p_and_intervals() -> None:
    from bctbench.statistics import rank_agreement

    published = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0, "e": 5.0}
    clear = {m: {s: v + 0.01 * s for s in range(5)} for m, v in published.items()}
    agree = rank_agreement(clear, published)
    assert (agree.tau, agree.low, agree.high, agree.p_positive) == (1.0, 1.0, 1.0, 1.0)
    assert agree.p == pytest.approx(1 / 120)  # only the identity ordering reaches τ = 1 among 5! orderings
    assert (agree.n_methods, agree.n_seeds, agree.with_test) == (5, 5, False)
    reverse = rank_agreement(clear, {m: -v for m, v in published.items()})
    assert reverse.tau == -1.0 and reverse.p == 1.0
    # noisy seeds: the interval widens and holds the point estimate
    rng = np.random.default_rng(0)
    noisy = {m: {s: v + rng.normal(0, 2.0) for s in range(3)} for m, v in published.items()}
    wide = rank_agreement(noisy, published)
    assert wide.low < wide.tau <= wide.high and wide.high - wide.low > 0.5
    # seeds the methods do not all have are left out; methods missing from either side too
    partial = {**clear, "a": {0: 1.0, 1: 1.0}, "zz": {0: 9.0}}
    assert rank_agreement(partial, published).n_seeds == 2
    with pytest.raises(ValueError, match="at least 3 methods"):
        rank_agreement({"a": {0: 1.0}, "b": {0: 2.0}}, published)


def test_rank_agreement_with_test_set_replicates_uses_them_round_by_round() -> None:
    from bctbench.statistics import rank_agreement

    published = {"a": 1.0, "b": 2.0, "c": 3.0}
    per_seed = {m: {0: v, 1: v} for m, v in published.items()}
    # every test resample swaps a and c: τ over the rounds is -1/3 wherever seeds are drawn
    boot = {"a": {0: np.full(40, 3.0), 1: np.full(40, 3.0)}, "b": {0: np.full(40, 2.0), 1: np.full(40, 2.0)}}
    boot["c"] = {0: np.full(40, 1.0), 1: np.full(40, 1.0)}
    res = rank_agreement(per_seed, published, boot)
    assert res.with_test and res.n_boot == 40 and res.tau == 1.0
    assert res.low == res.high == -1.0
