"""Golden and brute-force tests of ``bctbench.evaluation.metrics`` (``docs/evaluation.md`` §3-§6).

Bare § numbers in this module refer to ``docs/evaluation.md``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from bctbench.errors import EvaluationError
from bctbench.evaluation import metrics as M

# ------------------------------------------------------------------------------------------------------------
# brute-force references (straightforward per-query loops of the specification, no vectorisation)
# ------------------------------------------------------------------------------------------------------------


def brute_revisited(ranks, gnd, kappas=(1, 5, 10)):
    """Per query: delete junk from the ranking, then the trapezoidal AP and the capped P@k (§3.3)."""
    nq = ranks.shape[0]
    aps = np.full(nq, np.nan)
    prs = np.full((nq, len(kappas)), np.nan)
    for i in range(nq):
        ok, junk = set(np.asarray(gnd[i]["ok"]).tolist()), set(np.asarray(gnd[i].get("junk", [])).tolist())
        n_res = len(gnd[i]["ok"])
        if n_res == 0:
            continue
        cleaned = [x for x in ranks[i].tolist() if x not in junk or x in ok]
        # an item in ok and junk: a positive, and junk for later positives (reference semantics)
        positions = []
        n_junk = 0
        for p, x in enumerate(ranks[i].tolist()):
            if x in ok:
                positions.append(p - n_junk)
            if x in junk:
                n_junk += 1
        if not (ok & junk):
            assert positions == [p for p, x in enumerate(cleaned) if x in ok]
        ap = 0.0
        for j, rho in enumerate(positions):
            p0 = 1.0 if rho == 0 else j / rho
            p1 = (j + 1) / (rho + 1)
            ap += (p0 + p1) / n_res / 2.0
        aps[i] = ap
        for a, kappa in enumerate(kappas):
            if not positions:
                prs[i, a] = 0.0
                continue
            one_based = [r + 1 for r in positions]
            kq = min(max(one_based), kappa)
            prs[i, a] = sum(r <= kq for r in one_based) / kq
    valid = ~np.isnan(aps)
    return float(aps[valid].mean()), aps, prs[valid].mean(axis=0), prs


def brute_top1(ranks, gnd):
    out = []
    for i in range(ranks.shape[0]):
        ok, junk = set(np.asarray(gnd[i]["ok"]).tolist()), set(np.asarray(gnd[i].get("junk", [])).tolist())
        if not ok:
            out.append(np.nan)
            continue
        rest = [x for x in ranks[i].tolist() if x not in junk or x in ok]
        out.append(float(bool(rest) and rest[0] in ok))
    return np.array(out)


def brute_gldv2(predictions, solution, k=100):
    total = 0.0
    for pred, sol in zip(predictions, solution, strict=True):
        sol = set(sol)
        seen, hits, ap = set(), 0, 0.0
        for i, x in enumerate(list(pred)[:k]):
            if x in seen:
                continue
            seen.add(x)
            if x in sol:
                hits += 1
                ap += hits / (i + 1)
        total += ap / min(len(sol), k)
    return total / len(solution)


def random_case(rng, nq, n_db, k=None, overlap=False, duplicates=False):
    ranks = np.argsort(rng.random((nq, n_db)), axis=1)[:, : (k or n_db)]
    if duplicates:
        ranks[:, 1::7] = ranks[:, ::7][:, : ranks[:, 1::7].shape[1]]
    gnd = []
    for _ in range(nq):
        n_ok, n_junk = rng.integers(0, 12), rng.integers(0, 12)
        items = rng.choice(n_db, n_ok + n_junk, replace=False)
        junk = items[n_ok:]
        if overlap and n_ok and n_junk:
            junk = np.concatenate([junk, items[:1]])
        gnd.append({"ok": items[:n_ok], "junk": junk})
    return ranks, gnd


# ------------------------------------------------------------------------------------------------------------
# revisited: golden example (§3.4)
# ------------------------------------------------------------------------------------------------------------

GOLD_RANKS = np.array([[4, 7, 1, 6, 2, 0, 3, 5]])
GOLD_GND = [{"ok": np.array([4, 1, 0]), "junk": np.array([7, 6])}]


def test_golden_revisited_ap():
    m_ap, aps, mp, prs = M.revisited_map(GOLD_RANKS, GOLD_GND, kappas=(1, 2, 5, 10))
    assert m_ap == pytest.approx(0.9027777777777778, abs=1e-15)
    assert m_ap == pytest.approx((1 + 1 + (2 / 3 + 3 / 4) / 2) / 3, abs=1e-15)
    np.testing.assert_allclose(aps, [0.9027777777777778], atol=1e-15)
    np.testing.assert_allclose(mp, [1, 1, 0.75, 0.75], atol=1e-15)
    np.testing.assert_allclose(prs, [[1, 1, 0.75, 0.75]], atol=1e-15)


def test_golden_differs_from_textbook_ap():
    # textbook AP on the cleaned list (positions 0, 1, 3): (1/1 + 2/2 + 3/4) / 3
    cleaned = [x for x in GOLD_RANKS[0].tolist() if x not in (7, 6)]
    hits = [i for i, x in enumerate(cleaned) if x in (4, 1, 0)]
    textbook = sum((j + 1) / (p + 1) for j, p in enumerate(hits)) / 3
    assert textbook == pytest.approx(0.9166666666666666, abs=1e-15)
    assert M.revisited_map(GOLD_RANKS, GOLD_GND)[0] != pytest.approx(textbook)


def test_golden_junk_as_negatives():
    m_ap = M.revisited_map(GOLD_RANKS, [{"ok": [4, 1, 0]}])[0]
    assert m_ap == pytest.approx(0.6777777777777778, abs=1e-15)


def test_golden_truncated():
    m_ap, aps, mp, _ = M.revisited_map(GOLD_RANKS[:, :3], GOLD_GND)
    assert m_ap == pytest.approx(2 / 3, abs=1e-15)


def test_golden_empty_ok_query_excluded():
    ranks = np.vstack([GOLD_RANKS, GOLD_RANKS[:, ::-1]])
    gnd = GOLD_GND + [{"ok": np.array([], dtype=np.int64), "junk": np.array([3])}]
    m_ap, aps, mp, prs = M.revisited_map(ranks, gnd, kappas=(1, 2, 5, 10))
    assert m_ap == pytest.approx(0.9027777777777778, abs=1e-15)
    assert np.isnan(aps[1]) and np.isnan(prs[1]).all()
    np.testing.assert_allclose(mp, [1, 1, 0.75, 0.75], atol=1e-15)


def test_all_queries_empty_gives_nan():
    m_ap, aps, mp, _ = M.revisited_map(GOLD_RANKS, [{"ok": [], "junk": [1]}])
    assert math.isnan(m_ap) and np.isnan(aps).all() and np.isnan(mp).all()


def test_perfect_ranking_and_no_positive_retrieved():
    ranks = np.array([[3, 1, 0, 2, 4], [0, 1, 2, 3, 4]])
    gnd = [{"ok": [3, 1], "junk": []}, {"ok": [4], "junk": [0]}]
    m_ap, aps, mp, prs = M.revisited_map(ranks, gnd, kappas=(1, 5))
    assert aps[0] == 1.0
    trunc = M.revisited_map(ranks[:, :2], gnd, kappas=(1, 5))
    assert trunc[1][1] == 0.0 and (trunc[3][1] == 0.0).all()


def test_junk_invariance():
    rng = np.random.default_rng(1)
    for _ in range(20):
        n_db = 40
        perm = rng.permutation(n_db)
        ok, junk = perm[:5], perm[5:12]
        base = [x for x in rng.permutation(n_db).tolist() if x not in set(junk.tolist())]
        ap_ref = None
        for _ in range(5):  # insert the junk items at random places
            ranking = list(base)
            for j in junk.tolist():
                ranking.insert(int(rng.integers(0, len(ranking) + 1)), j)
            ap = M.revisited_map(np.array([ranking]), [{"ok": ok, "junk": junk}])[0]
            ap_ref = ap if ap_ref is None else ap_ref
            assert ap == ap_ref


def test_orientation_nq_not_ndb():
    # 2 queries, 6 database items: rows are queries
    ranks = np.array([[0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0]])
    gnd = [{"ok": [0], "junk": []}, {"ok": [0], "junk": []}]
    _, aps, _, _ = M.revisited_map(ranks, gnd)
    np.testing.assert_allclose(aps, [1.0, (0 / 5 + 1 / 6) / 2], atol=1e-15)  # positive last of 6
    with pytest.raises(EvaluationError):
        M.revisited_map(ranks.T, gnd)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"k": 25}, {"overlap": True}, {"duplicates": True}, {"k": 7, "overlap": True, "duplicates": True}],
)
def test_revisited_matches_brute_force(kwargs):
    rng = np.random.default_rng(7)
    for _ in range(4):
        ranks, gnd = random_case(rng, nq=int(rng.integers(1, 30)), n_db=int(rng.integers(20, 60)), **kwargs)
        kappas = (1, 3, 5, 10)
        got = M.revisited_map(ranks, gnd, kappas)
        ref = brute_revisited(ranks, gnd, kappas)
        if math.isnan(ref[0]):
            assert math.isnan(got[0])
            continue
        assert abs(got[0] - ref[0]) <= 1e-12
        np.testing.assert_allclose(got[1], ref[1], atol=1e-12, rtol=0)
        np.testing.assert_allclose(got[2], ref[2], atol=1e-12, rtol=0)
        np.testing.assert_allclose(got[3], ref[3], atol=1e-12, rtol=0)
        np.testing.assert_array_equal(M.revisited_top1_correct(ranks, gnd), brute_top1(ranks, gnd))


def test_revisited_chunking_is_invisible(monkeypatch):
    rng = np.random.default_rng(3)
    ranks, gnd = random_case(rng, nq=23, n_db=50, k=30)
    full = M.revisited_map(ranks, gnd)
    monkeypatch.setattr(M, "_CHUNK_BYTES", 1)  # one query per chunk
    chunked = M.revisited_map(ranks, gnd)
    assert full[0] == chunked[0]
    np.testing.assert_array_equal(full[1], chunked[1])
    np.testing.assert_array_equal(full[3], chunked[3])
    np.testing.assert_array_equal(M.revisited_top1_correct(ranks, gnd), brute_top1(ranks, gnd))


@pytest.mark.parametrize("per_row", [True, False])
@pytest.mark.parametrize("threads", [1, 3])
def test_scan_paths_and_threads_are_invisible(monkeypatch, per_row, threads):
    # both gather paths (per query / one call per chunk), several chunks scanned by several threads, with
    # ids beyond every gnd id and negative padding (clip-mode gathers must verify hits against the id)
    rng = np.random.default_rng(11)
    ranks, gnd = random_case(rng, nq=17, n_db=60, k=40, overlap=True, duplicates=True)
    ranks = ranks.copy()
    ranks[:, ::7] = -1
    ranks[::3, 5] = 10_000
    monkeypatch.setattr(M, "_PER_ROW_TAKE", 1 if per_row else 10**9)
    monkeypatch.setattr(M, "_THREADED_ENTRIES", 1)
    monkeypatch.setattr(M, "_CHUNK_BYTES", 1000)  # a few queries per chunk
    got = M.revisited_map(ranks, gnd, threads=threads)
    ref = brute_revisited(ranks, gnd, (1, 5, 10))
    assert abs(got[0] - ref[0]) <= 1e-12
    np.testing.assert_allclose(got[1], ref[1], atol=1e-12, rtol=0)
    np.testing.assert_allclose(got[3], ref[3], atol=1e-12, rtol=0)
    np.testing.assert_array_equal(M.revisited_top1_correct(ranks, gnd), brute_top1(ranks, gnd))


def test_out_of_table_and_negative_indices_never_match():
    # gallery ids beyond every gnd id and negative padding behave like non-relevant items (np.isin semantics)
    ranks = np.array([[900, -1, 3, -2, 1, 5000]])
    gnd = [{"ok": [1, 3], "junk": [0]}]
    assert M.revisited_map(ranks, gnd)[1][0] == pytest.approx(brute_revisited(ranks, gnd)[1][0], abs=1e-15)


def test_revisited_input_errors():
    with pytest.raises(EvaluationError, match="n_queries"):
        M.revisited_map(GOLD_RANKS[0], GOLD_GND)
    with pytest.raises(EvaluationError, match="integer"):
        M.revisited_map(GOLD_RANKS.astype(float), GOLD_GND)
    with pytest.raises(EvaluationError, match="kappas"):
        M.revisited_map(GOLD_RANKS, GOLD_GND, kappas=(0, 1))
    with pytest.raises(EvaluationError, match="gnd"):
        M.revisited_top1_correct(np.vstack([GOLD_RANKS, GOLD_RANKS]), GOLD_GND)


def test_revisited_gnd_protocols():
    gnd = [{"easy": [1, 2], "hard": [3], "junk": [4], "bbx": (0, 0, 1, 1)}]
    e, m, h = (M.revisited_gnd(gnd, p)[0] for p in ("easy", "medium", "hard"))
    assert sorted(e["ok"]) == [1, 2] and sorted(e["junk"]) == [3, 4]
    assert sorted(m["ok"]) == [1, 2, 3] and sorted(m["junk"]) == [4]
    assert sorted(h["ok"]) == [3] and sorted(h["junk"]) == [1, 2, 4]
    assert e["ok"].dtype == np.int64 and h["junk"].dtype == np.int64
    with pytest.raises(EvaluationError):
        M.revisited_gnd(gnd, "extreme")


def test_top1_correct():
    ranks = np.array([[7, 6, 4, 1], [7, 2, 4, 1], [7, 6, 7, 6], [0, 1, 2, 3]])
    gnd = [
        {"ok": [4, 1], "junk": [7, 6]},
        {"ok": [4, 1], "junk": [7, 6]},
        {"ok": [4], "junk": [7, 6]},
        {"ok": []},
    ]
    out = M.revisited_top1_correct(ranks, gnd)
    np.testing.assert_array_equal(out[:3], [1.0, 0.0, 0.0])
    assert np.isnan(out[3])


# ------------------------------------------------------------------------------------------------------------
# GLDv2 (§4)
# ------------------------------------------------------------------------------------------------------------


def test_golden_gldv2():
    x, a, b, c, y, z = 1000, 1, 2, 3, 1001, 7
    solution = [{a, b, c}, set(range(10, 160)), {z}]
    q1 = [x, a, a, y, b]
    q2 = list(range(10, 110))
    preds = [q1, q2, []]
    assert M.gldv2_map_at_k(preds, solution) == pytest.approx(1.3 / 3, abs=1e-15)
    # the same as an int64[nq, 100] array padded with -1 (faiss style)
    arr = np.full((3, 100), -1, dtype=np.int64)
    arr[0, :5] = q1
    arr[1] = q2
    assert M.gldv2_map_at_k(arr, solution) == pytest.approx(1.3 / 3, abs=1e-15)
    per_query = [M.gldv2_map_at_k([p], [s]) for p, s in zip(preds, solution, strict=True)]
    np.testing.assert_allclose(per_query, [0.3, 1.0, 0.0], atol=1e-15)


def test_gldv2_matches_brute_force_and_uses_first_k():
    rng = np.random.default_rng(5)
    nq, n_db = 40, 300
    preds = rng.integers(0, n_db, size=(nq, 130))  # duplicates included; only the first 100 count
    solution = [set(rng.choice(n_db, int(rng.integers(1, 150)), replace=False).tolist()) for _ in range(nq)]
    ref = brute_gldv2(preds.tolist(), solution)
    assert abs(M.gldv2_map_at_k(preds, solution) - ref) <= 1e-12
    assert abs(M.gldv2_map_at_k(list(preds), solution) - ref) <= 1e-12
    assert abs(M.gldv2_map_at_k(preds, solution, k=10) - brute_gldv2(preds.tolist(), solution, k=10)) <= 1e-12


def test_gldv2_errors():
    with pytest.raises(EvaluationError):
        M.gldv2_map_at_k([[1]], [set()])
    with pytest.raises(EvaluationError):
        M.gldv2_map_at_k([[1], [2]], [{1}])


# ------------------------------------------------------------------------------------------------------------
# compatibility metrics (§5)
# ------------------------------------------------------------------------------------------------------------

# AdvBCT extended-data block (docs/results.md §10): RParis-M, ROxford-M, GLDv2 private mAP@100
OLD = {"rparis6k": 75.45, "roxford5k": 49.15, "gldv2": 10.03}
PARAGON = {"rparis6k": 81.15, "roxford5k": 63.85, "gldv2": 16.48}
BCT_SELF = {"rparis6k": 80.58, "roxford5k": 56.34, "gldv2": 14.61}
BCT_CROSS = {"rparis6k": 77.37, "roxford5k": 49.66, "gldv2": 11.30}


def test_p_metrics_reproduce_advbct_bct_row():
    out = M.compatibility_scores(BCT_SELF, BCT_CROSS, OLD, PARAGON)
    assert out["P_up"] == pytest.approx(48.02, abs=0.01)
    assert out["P_comp"] == pytest.approx(54.71, abs=0.01)
    assert out["P_beta"] == pytest.approx(51.13, abs=0.01)
    np.testing.assert_allclose(list(out["u"].values()), [0.498244, 0.470629, 0.471663], atol=1e-6)
    np.testing.assert_allclose(list(out["c"].values()), [0.583423, 0.508673, 0.549066], atol=1e-6)
    # scale-free: fractions give the same numbers
    frac = M.compatibility_scores(
        *({k: v / 100 for k, v in d.items()} for d in (BCT_SELF, BCT_CROSS, OLD, PARAGON))
    )
    assert frac["P_beta"] == pytest.approx(out["P_beta"], abs=1e-9)


def test_p_metrics_paragon_row_and_guards():
    cross = {"rparis6k": 4.93, "roxford5k": 1.20, "gldv2": 0.2}
    out = M.compatibility_scores(None, cross, OLD, PARAGON)
    assert out["P_comp"] == pytest.approx(7.19, abs=0.01)
    assert math.isnan(out["P_up"]) and math.isnan(out["P_beta"])
    guarded = M.compatibility_scores(BCT_SELF, BCT_CROSS, OLD, {**PARAGON, "gldv2": OLD["gldv2"]})
    assert math.isnan(guarded["c"]["gldv2"]) and math.isnan(guarded["P_comp"])
    assert not math.isnan(guarded["c"]["rparis6k"])
    # beta > 1 weights compatibility (c in the recall position)
    b2 = M.compatibility_scores(BCT_SELF, BCT_CROSS, OLD, PARAGON, beta=2.0)
    u, c = b2["u"]["rparis6k"], b2["c"]["rparis6k"]
    assert b2["f"]["rparis6k"] == pytest.approx(5 * u * c / (4 * u + c))
    with pytest.raises(EvaluationError):
        M.compatibility_scores(BCT_SELF, {"rparis6k": 1.0}, OLD, PARAGON)


def test_compatibility_criterion_and_update_gain():
    cross = {"a": 0.6, "b": 0.4}
    new = {"a": 0.7, "b": 0.6}
    old = {"a": 0.5, "b": 0.5}
    out = M.compatibility_criterion(cross, new, old)
    assert out["per_set"]["a"] == {"a": True, "b": True, "a_and_b": True}
    assert out["per_set"]["b"] == {"a": False, "b": True, "a_and_b": False}
    assert out["a"] is False and out["b"] is True and out["a_and_b"] is False
    # equality is not an improvement
    assert M.compatibility_criterion({"x": 0.5}, {"x": 0.6}, {"x": 0.5})["a"] is False
    assert M.update_gain(0.6, 0.5, 0.7) == pytest.approx(0.5)
    assert math.isnan(M.update_gain(0.6, 0.5, 0.5))
    gains = M.update_gain(cross, old, {"a": 0.7, "b": 0.7})
    assert gains["a"] == pytest.approx(0.5) and gains["b"] == pytest.approx(-0.5)


def test_multi_step_metrics():
    C = np.array([[0.50, np.nan, np.nan], [0.55, 0.60, np.nan], [0.45, 0.65, 0.70]])
    out = M.multi_step_metrics(C)
    # pairs (1,0): 0.55 > 0.50 yes; (2,0): 0.45 > 0.50 no; (2,1): 0.65 > 0.60 yes
    assert out["AC"] == pytest.approx(2 / 3)
    assert out["AA"] == pytest.approx(np.mean([0.50, 0.55, 0.60, 0.45, 0.65, 0.70]))
    assert math.isnan(M.multi_step_metrics([[0.3]])["AC"])
    with pytest.raises(EvaluationError):
        M.multi_step_metrics(np.zeros((2, 3)))


# ------------------------------------------------------------------------------------------------------------
# backfilling (§6)
# ------------------------------------------------------------------------------------------------------------


def test_backfill_auc_and_gain():
    t = np.linspace(0, 1, 11)
    assert M.backfill_auc(t, np.full(11, 0.4)) == pytest.approx(0.4)
    assert M.backfill_auc(t, t) == pytest.approx(0.5)
    assert M.backfill_auc([0, 0.5, 1], [0.2, 0.4, 0.5]) == pytest.approx(0.25 * 0.6 + 0.25 * 0.9)
    assert M.relative_auc_gain(0.6, 0.5, 0.7) == pytest.approx(0.5)
    assert math.isnan(M.relative_auc_gain(0.6, 0.5, 0.5))
    with pytest.raises(EvaluationError):
        M.backfill_auc([0, 0.5, 0.5, 1], [1, 1, 1, 1])
    with pytest.raises(EvaluationError):
        M.backfill_auc([0, 1], [1])


def test_negative_flip_rate():
    old = np.array([1.0, 1.0, 0.0, 1.0, np.nan, 1.0])
    new = np.array([0.0, 1.0, 1.0, np.nan, 0.0, 1.0])
    # valid queries 0, 1, 2, 5; flips: query 0 only
    assert M.negative_flip_rate(old, new) == pytest.approx(1 / 4)
    assert M.negative_flip_rate([True, False], [False, False]) == pytest.approx(0.5)
    assert math.isnan(M.negative_flip_rate([np.nan], [1.0]))


def test_lookup_tables_are_clean_after_an_error_and_between_calls(monkeypatch):
    # the scan keeps its lookup tables between calls and resets the cells it set, also when it fails
    rng = np.random.default_rng(12)
    ranks, gnd = random_case(rng, nq=9, n_db=50, k=50, overlap=True, duplicates=True)
    other_ranks, other_gnd = random_case(rng, nq=9, n_db=50, k=50, overlap=False, duplicates=False)
    real_flatnonzero = np.flatnonzero

    def failing(*args, **kwargs):
        raise RuntimeError("injected failure after the tables were filled")

    monkeypatch.setattr(M.np, "flatnonzero", failing)
    with pytest.raises(RuntimeError, match="injected"):
        M.revisited_map(ranks, gnd)
    monkeypatch.setattr(M.np, "flatnonzero", real_flatnonzero)
    for r, g in ((other_ranks, other_gnd), (ranks, gnd), (other_ranks, other_gnd)):
        got, ref = M.revisited_map(r, g), brute_revisited(r, g, (1, 5, 10))
        np.testing.assert_allclose(got[1], ref[1], atol=1e-12, rtol=0)
        np.testing.assert_allclose(got[3], ref[3], atol=1e-12, rtol=0)


def test_p_scores_match_compatibility_scores_elementwise() -> None:
    from bctbench.evaluation.metrics import compatibility_scores, p_scores

    rng = np.random.default_rng(3)
    E, B = 2, 7
    self_new, cross, old, par = (rng.uniform(0.1, 0.6, (E, B)) for _ in range(4))
    old[1, 3] = par[1, 3]  # P_comp guard: paragon == old -> NaN
    vec = p_scores(self_new, cross, old, par)
    vec_paragon = p_scores(None, cross, old, par)
    for b in range(B):
        names = [f"e{i}" for i in range(E)]
        ref = compatibility_scores(
            dict(zip(names, self_new[:, b], strict=True)),
            dict(zip(names, cross[:, b], strict=True)),
            dict(zip(names, old[:, b], strict=True)),
            dict(zip(names, par[:, b], strict=True)),
        )
        for key in ("P_up", "P_comp", "P_beta"):
            np.testing.assert_allclose(vec[key][b], ref[key], rtol=1e-12, equal_nan=True)
        assert np.isnan(vec_paragon["P_up"][b]) and np.isnan(vec_paragon["P_beta"][b])
        np.testing.assert_allclose(vec_paragon["P_comp"][b], ref["P_comp"], rtol=1e-12, equal_nan=True)
