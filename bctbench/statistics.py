"""Honest uncertainty for a retrieval leaderboard.

A benchmark has ``n`` seeds; seed ``k`` is one replicate (old model ``k`` plus each method's new model ``k``).
Every (run, model pair) yields a per-query AP vector ``ap: float[nq]`` (NaN = query not scored); the metric
is its nanmean. Two sources of error are combined here:

* seed-to-seed variation (training randomness), estimated from the per-seed values, and
* test-set sampling, estimated by a bootstrap over *landmarks* (queries of one landmark are not independent),
  where every seed and method uses the SAME resample weights so that paired differences cancel shared noise.

Typical use::

    w = landmark_bootstrap_weights(groups)            # [B, nq]
    boot = bootstrap_metric(ap_per_seed, w)           # [n, nq] -> [n, B]
    iv = combined_interval(ap_per_seed_mean, boot)    # mean ± half
    cmp = paired_comparison(a, b, boot_a, boot_b)     # difference a - b with p-value and verdict

Only NumPy and ``scipy.stats`` (t / normal quantiles and tail probabilities) are used.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = [
    "Comparison",
    "Interval",
    "RankAgreement",
    "bootstrap_metric",
    "combined_interval",
    "holm",
    "kendall_tau_b",
    "landmark_bootstrap_weights",
    "min_detectable_difference",
    "paired_comparison",
    "rank_agreement",
    "significantly_best",
    "tiers",
]

_NAN = float("nan")


# ------------------------------------------------------------------------------------------------------------
# bootstrap over landmarks
# ------------------------------------------------------------------------------------------------------------


def landmark_bootstrap_weights(groups, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """Cluster-bootstrap weights: resample landmarks with replacement.

    Args:
        groups: int[nq], landmark id of every query (arbitrary integers, need not be contiguous).
        n_boot: number of bootstrap rounds B.
        seed: seed of ``np.random.default_rng``; the result is deterministic for a given seed.

    Returns:
        float64[B, nq]; ``w[b, i]`` = how many times query ``i``'s landmark was drawn in round ``b``
        (each round draws ``n_landmarks`` landmark ids with replacement). Share one matrix across all seeds
        and methods so that paired differences are resampled identically.
    """
    groups = np.asarray(groups)
    if groups.ndim != 1:
        raise ValueError(f"groups must be 1-D (one landmark id per query), got shape {groups.shape}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    nq = groups.shape[0]
    if nq == 0:
        return np.zeros((n_boot, 0), dtype=np.float64)
    # landmark index 0..L-1 per query
    _, inv = np.unique(groups, return_inverse=True)
    inv = inv.reshape(-1)
    n_lm = int(inv.max()) + 1
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_lm, size=(n_boot, n_lm))  # [B, L]
    # per-round draw counts via one flat bincount (row b uses bins b*L .. b*L+L-1)
    flat = (draws + (np.arange(n_boot) * n_lm)[:, None]).ravel()
    counts = np.bincount(flat, minlength=n_boot * n_lm).reshape(n_boot, n_lm)  # [B, L]
    return counts[:, inv].astype(np.float64)  # [B, nq]


def bootstrap_metric(ap, weights) -> np.ndarray:
    """Weighted mean AP over the scored queries, for every bootstrap round.

    Args:
        ap: float[..., nq] per-query AP, NaN for unscored queries.
        weights: float[B, nq] bootstrap weights (e.g. from :func:`landmark_bootstrap_weights`).

    Returns:
        float[..., B]: ``sum_i w[b, i] ap[..., i] / sum_i w[b, i]`` over scored ``i``; NaN where a round puts
        zero weight on the scored queries. With all-ones weights this is ``np.nanmean(ap, axis=-1)``.
    """
    ap = np.asarray(ap, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 2:
        raise ValueError(f"weights must be [B, nq], got shape {weights.shape}")
    if ap.ndim == 0 or ap.shape[-1] != weights.shape[1]:
        raise ValueError(f"ap last dim must match weights nq={weights.shape[1]}, got shape {ap.shape}")
    mask = ~np.isnan(ap)
    num = np.where(mask, ap, 0.0) @ weights.T  # [..., B]
    den = mask.astype(np.float64) @ weights.T  # [..., B]
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


# ------------------------------------------------------------------------------------------------------------
# intervals
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    """A confidence interval combining seed-to-seed and test-set error.

    ``n`` is the number of seeds; ``seed_sd`` / ``seed_half`` are NaN when ``n < 2`` (with ``n == 1`` and a
    bootstrap, the interval reflects test-set error only); ``test_se`` is NaN without a bootstrap; ``df`` are
    the Welch–Satterthwaite degrees of freedom of the combined interval (``inf`` = normal quantile).
    """

    mean: float
    low: float
    high: float
    n: int
    seed_sd: float
    seed_half: float
    test_se: float
    df: float

    @property
    def half(self) -> float:
        """Half width ``(high - low) / 2``."""
        return (self.high - self.low) / 2


def _quantile(q: float, df: float) -> float:
    """t quantile; normal quantile when ``df`` is infinite."""
    if np.isnan(df):
        return _NAN
    return float(stats.norm.ppf(q) if np.isinf(df) else stats.t.ppf(q, df))


def _two_sided_p(stat: float, df: float) -> float:
    """``2 * (1 - T_df(|stat|))`` (normal when ``df`` is infinite); via the survival function."""
    stat = abs(stat)
    return float(2 * (stats.norm.sf(stat) if np.isinf(df) else stats.t.sf(stat, df)))


def _test_se(boot: np.ndarray) -> float:
    """Test-set SE from bootstrap replicates ``boot: float[n, B]``: std (ddof=1) over rounds of the seed-mean.

    Rounds whose seed-mean is NaN (no scored query in that round) are dropped; NaN if fewer than 2 remain.
    """
    rounds = boot.mean(axis=0)  # [B]
    rounds = rounds[~np.isnan(rounds)]
    if rounds.size < 2:
        return _NAN
    return float(rounds.std(ddof=1))


def _combine(per_seed, boot, level: float) -> tuple[Interval, float]:
    """Shared construction behind :func:`combined_interval` / :func:`paired_comparison`.

    Returns the interval and the combined variance ``V`` of the mean.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    x = np.asarray(per_seed, dtype=np.float64).reshape(-1)  # [n]
    n = int(x.size)
    if boot is not None:
        boot = np.asarray(boot, dtype=np.float64)
        if boot.ndim != 2 or boot.shape[0] != n:
            raise ValueError(f"boot must be [n={n}, B], got shape {boot.shape}")
    if n == 0:
        return Interval(_NAN, _NAN, _NAN, 0, _NAN, _NAN, _NAN, _NAN), _NAN

    q = (1 + level) / 2
    mean = float(x.mean())
    se = _test_se(boot) if boot is not None else _NAN

    if n == 1:
        # seed spread unknown; with a bootstrap the interval covers test-set error only
        if boot is None:
            return Interval(mean, _NAN, _NAN, 1, _NAN, _NAN, _NAN, _NAN), _NAN
        var, df = se**2, float("inf")
        half = _quantile(q, df) * np.sqrt(var)
        return Interval(mean, mean - half, mean + half, 1, _NAN, _NAN, se, df), var

    sd = float(x.std(ddof=1))
    v_seed = sd**2 / n
    seed_half = _quantile(q, n - 1) * np.sqrt(v_seed)
    if boot is None:
        var, df = v_seed, float(n - 1)  # plain t interval
    else:
        var = v_seed + se**2
        # Welch–Satterthwaite with the bootstrap part treated as having infinite df
        df = float("inf") if v_seed == 0 else var**2 * (n - 1) / v_seed**2
    half = _quantile(q, df) * np.sqrt(var)
    iv = Interval(mean, mean - half, mean + half, n, sd, float(seed_half), se, float(df))
    return iv, float(var)


def combined_interval(per_seed, boot=None, level: float = 0.95) -> Interval:
    """Confidence interval for the seed-mean of a metric, combining seed and test-set error.

    Args:
        per_seed: float[n], the metric value of each seed.
        boot: optional float[n, B], bootstrap replicates of each seed's value (the SAME resamples for all
            seeds, e.g. ``bootstrap_metric(ap[n, nq], weights)``).
        level: confidence level.

    With ``s`` the sample sd (ddof=1) of ``per_seed`` and ``SE`` the std over rounds of ``boot.mean(axis=0)``:
    ``V = s²/n + SE²``, ``df = V² (n-1) / (s²/n)²`` (``inf`` if ``s == 0``), interval ``mean ± t_df sqrt(V)``.

    Cases: ``n == 0`` → all NaN; ``n == 1`` with ``boot`` → test-set error only (``df = inf``, seed fields
    NaN); ``n == 1`` without ``boot`` → ``low = high = NaN``; ``n >= 2`` without ``boot`` → plain t interval
    with ``df = n - 1``. ``seed_half`` uses the same level's t quantile with ``n - 1`` df.
    NaN inputs propagate (a NaN seed value makes the interval NaN).
    """
    return _combine(per_seed, boot, level)[0]


# ------------------------------------------------------------------------------------------------------------
# paired comparisons
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """Paired difference ``a - b``: interval, two-sided p-value, number of seed pairs and a verdict.

    ``verdict`` is "✓" if ``low > 0``, "✗" if ``high < 0``, else "≈" (also for NaN bounds).
    """

    mean: float
    low: float
    high: float
    p: float
    n: int
    verdict: str


def _verdict(low: float, high: float) -> str:
    if low > 0:
        return "✓"
    if high < 0:
        return "✗"
    return "≈"  # includes NaN bounds


def paired_comparison(a, b, boot_a=None, boot_b=None, level: float = 0.95) -> Comparison:
    """Compare two methods on aligned seeds.

    Args:
        a, b: float[n] per-seed values (seed ``k`` of ``a`` pairs with seed ``k`` of ``b``).
        boot_a, boot_b: optional float[n, B] bootstrap replicates, SAME resamples (give both or neither).
        level: confidence level of the interval.

    The interval is :func:`combined_interval` on ``d = a - b`` (with ``boot_a - boot_b``). The p-value is
    ``2 (1 - T_df(|mean| / sqrt(V)))`` (normal if ``df = inf``), so ``low > 0 or high < 0`` ⇔
    ``p < 1 - level``.
    Degenerate ``V == 0``: ``p = 1`` if ``mean == 0`` else ``p = 0``; NaN when ``V`` is undefined.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same number of seeds, got {a.size} and {b.size}")
    if (boot_a is None) != (boot_b is None):
        raise ValueError("give both boot_a and boot_b, or neither")
    boot_d = None
    if boot_a is not None:
        boot_a, boot_b = np.asarray(boot_a, dtype=np.float64), np.asarray(boot_b, dtype=np.float64)
        if boot_a.shape != boot_b.shape:
            raise ValueError(f"boot_a and boot_b shapes differ: {boot_a.shape} vs {boot_b.shape}")
        boot_d = boot_a - boot_b  # [n, B]

    iv, var = _combine(a - b, boot_d, level)
    if np.isnan(var) or np.isnan(iv.mean):
        p = _NAN
    elif var == 0:
        p = 1.0 if iv.mean == 0 else 0.0
    else:
        p = _two_sided_p(iv.mean / np.sqrt(var), iv.df)
    return Comparison(iv.mean, iv.low, iv.high, p, iv.n, _verdict(iv.low, iv.high))


# ------------------------------------------------------------------------------------------------------------
# multiple testing and ranking
# ------------------------------------------------------------------------------------------------------------


def holm(pvalues, alpha: float = 0.05) -> np.ndarray:
    """Holm–Bonferroni step-down procedure.

    Args:
        pvalues: float[m]; NaN p-values are never rejected but count in ``m``.
        alpha: family-wise error rate.

    Returns:
        bool[m], True where the hypothesis is rejected.
    """
    p = np.asarray(pvalues, dtype=np.float64).reshape(-1)
    m = p.size
    if m == 0:
        return np.zeros(0, dtype=bool)
    order = np.argsort(np.where(np.isnan(p), np.inf, p), kind="stable")
    thresh = alpha / (m - np.arange(m))  # alpha/m, alpha/(m-1), ..., alpha
    ok = p[order] <= thresh  # NaN compares False
    reject = np.zeros(m, dtype=bool)
    reject[order] = np.logical_and.accumulate(ok)  # stop at the first non-rejection
    return reject


def _check_names_scores(names: Sequence[str], scores) -> tuple[list[str], np.ndarray]:
    names = list(names)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(names) != s.size:
        raise ValueError(f"got {len(names)} names but {s.size} scores")
    if len(set(names)) != len(names):
        raise ValueError("method names must be unique")
    return names, s


def tiers(
    names: Sequence[str], scores, compare: Callable[[int, int], float], alpha: float = 0.05
) -> dict[str, int]:
    """Group methods into tiers of statistically indistinguishable performance.

    Args:
        names: list[str] of m method names (unique).
        scores: float[m] ranking quantity, higher is better.
        compare: ``compare(i, j)`` → p-value of the paired test that method ``i`` differs from method ``j``.
        alpha: family-wise error rate of each tier's Holm correction.

    Repeatedly: take the best remaining method, test every other remaining method against it, apply Holm;
    the best plus all non-rejected methods form the next tier. Methods with NaN scores share one final tier
    after all others (they are never compared).

    Returns:
        ``{name: tier}`` with tiers numbered from 1.
    """
    names, s = _check_names_scores(names, scores)
    out: dict[str, int] = {}
    remaining = [i for i in range(len(names)) if not np.isnan(s[i])]
    tier = 1
    while remaining:
        best = max(remaining, key=lambda i: s[i])  # first one on ties
        others = [j for j in remaining if j != best]
        rejected = holm([compare(best, j) for j in others], alpha)
        members = [best] + [j for j, r in zip(others, rejected, strict=True) if not r]
        for i in members:
            out[names[i]] = tier
        remaining = [i for i in remaining if i not in members]
        tier += 1
    for i in range(len(names)):
        if np.isnan(s[i]):
            out[names[i]] = tier
    return out


def significantly_best(
    names: Sequence[str], scores, compare: Callable[[int, int], float], alpha: float = 0.05
) -> str | None:
    """The top-scoring method if it is significantly better than every other, else None.

    Args and ``compare`` as in :func:`tiers`. Only methods with finite scores take part; the winner must beat
    each of them strictly on score and every comparison must be rejected by Holm at ``alpha``. Fewer than two
    methods with finite scores → None.
    """
    names, s = _check_names_scores(names, scores)
    cand = [i for i in range(len(names)) if np.isfinite(s[i])]
    if len(cand) < 2:
        return None
    best = max(cand, key=lambda i: s[i])
    others = [j for j in cand if j != best]
    if not all(s[best] > s[j] for j in others):
        return None
    rejected = holm([compare(best, j) for j in others], alpha)
    return names[best] if bool(rejected.all()) else None


# ------------------------------------------------------------------------------------------------------------
# power
# ------------------------------------------------------------------------------------------------------------


def min_detectable_difference(sd_diff: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest true paired difference a two-sided t-test on ``n`` seeds detects with the given power.

    ``(t_{1-alpha/2, n-1} + t_{power, n-1}) * sd_diff / sqrt(n)``, where ``sd_diff`` is the sd of the
    per-seed differences. NaN for ``n < 2``.
    """
    if n < 2:
        return _NAN
    df = n - 1
    return float((stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)) * sd_diff / np.sqrt(n))


# ------------------------------------------------------------------------------------------------------------
# agreement of a ranking with a published one
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RankAgreement:
    """Kendall's τ_b between the seed means of ``n_methods`` methods and published values, with its uncertainty.

    ``low``/``high``: percentile interval of τ_b over the bootstrap rounds (``level``); ``p_positive``: share of
    rounds with τ_b > 0; ``p``: exact one-sided permutation p-value of a τ_b at least as large under no
    association (all orderings of the published values equally likely); ``with_test``: whether the rounds also
    resample the test set (landmark bootstrap) besides the seeds.
    """

    tau: float
    low: float
    high: float
    p: float
    p_positive: float
    n_methods: int
    n_seeds: int
    n_boot: int
    with_test: bool


def _tau_rows(values: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Kendall τ_b of every row of ``values: float[R, M]`` against ``ref: float[M]`` (vectorised over rows)."""
    i, j = np.triu_indices(ref.size, k=1)
    a = np.sign(values[:, j] - values[:, i])  # [R, P]
    b = np.sign(ref[j] - ref[i])  # [P]
    n_a = (a != 0).sum(axis=1)
    n_b = int((b != 0).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a * b).sum(axis=1) / np.sqrt(n_a * n_b)


def kendall_tau_b(x, y) -> float:
    """Kendall's τ_b of two ``float[M]`` vectors (ties counted as in τ_b; NaN when either is constant)."""
    x, y = np.asarray(x, dtype=np.float64).reshape(1, -1), np.asarray(y, dtype=np.float64).reshape(-1)
    if x.shape[1] != y.size:
        raise ValueError(f"x has {x.shape[1]} values but y has {y.size}")
    return float(_tau_rows(x, y)[0])


def rank_agreement(
    per_seed,
    published,
    per_seed_boot=None,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> RankAgreement:
    """How well the suite's ordering of methods agrees with a published one.

    Args:
        per_seed: ``{method: {seed: value}}``; only the seeds every compared method has are used.
        published: ``{method: value}``; the compared methods are those in both mappings (at least 3).
        per_seed_boot: optional ``{method: {seed: float[B]}}`` landmark-bootstrap replicates (the same test-set
            resamples for every method); round ``b`` then uses test resample ``b`` (``n_boot`` = B).
        n_boot, seed: bootstrap rounds (without ``per_seed_boot``) and the generator's seed.

    Each round draws the seeds with replacement (jointly for every method: seed k is one replicate of the
    whole pipeline), averages each method over them and computes τ_b against ``published``.
    """
    names = sorted(set(per_seed) & set(published))
    if len(names) < 3:
        raise ValueError(f"need at least 3 methods in both rankings, got {len(names)}")
    seeds = sorted(set.intersection(*(set(per_seed[n]) for n in names)))
    if not seeds:
        raise ValueError("the methods share no seed")
    values = np.array([[per_seed[n][s] for s in seeds] for n in names], dtype=np.float64)  # [M, S]
    ref = np.array([published[n] for n in names], dtype=np.float64)
    tau = kendall_tau_b(values.mean(axis=1), ref)

    boots = None
    if per_seed_boot is not None and all(
        per_seed_boot.get(n, {}).get(s) is not None for n in names for s in seeds
    ):
        boots = np.array([[per_seed_boot[n][s] for s in seeds] for n in names], dtype=np.float64)  # [M, S, B]
        n_boot = boots.shape[2]
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(seeds), size=(n_boot, len(seeds)))  # [B, S]
    if boots is None:
        rounds = values[:, pick].mean(axis=2).T  # [B, M]
    else:
        rounds = np.stack([boots[:, pick[b], b].mean(axis=1) for b in range(n_boot)])  # [B, M]
    taus = _tau_rows(rounds, ref)
    taus = taus[~np.isnan(taus)]
    alpha = (1 - level) / 2
    low, high = (float(np.quantile(taus, q)) for q in (alpha, 1 - alpha)) if taus.size else (_NAN, _NAN)

    from itertools import permutations

    perms = np.array(list(permutations(range(len(names)))), dtype=np.int64)  # [M!, M]
    null = _tau_rows(ref[perms], values.mean(axis=1))
    p = float(np.mean(null >= tau - 1e-12)) if math.isfinite(tau) else _NAN
    return RankAgreement(
        tau=tau,
        low=low,
        high=high,
        p=p,
        p_positive=float(np.mean(taus > 0)) if taus.size else _NAN,
        n_methods=len(names),
        n_seeds=len(seeds),
        n_boot=int(n_boot),
        with_test=boots is not None,
    )
