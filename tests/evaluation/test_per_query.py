"""Per-query scores of the primary (protocol, metric), landmark groups per query, and their place in the
evaluator's report (``CompatibilityReport.per_query``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from bctbench.evaluation import metrics as M
from bctbench.evaluation.compatibility import BackfillSettings, CompatibilityEvaluator
from bctbench.evaluation.evalsets import GLDv2EvalSet, RevisitedEvalSet
from bctbench.evaluation.features import FeatureCache
from bctbench.method import Encoder


def _paths(prefix: str, n: int) -> tuple[Path, ...]:
    return tuple(Path(f"{prefix}{i}.jpg") for i in range(n))


def _loop_ap(pred, sol, k):
    """Slow reference: official DELF AP@k of one query (duplicates skipped, -1 padding never matches; the
    official code divides by ``min(len(solution list), k)``)."""
    n_expected = min(len(sol), k)
    sol = set(sol)
    seen, hits, ap = set(), 0, 0.0
    for i, x in enumerate(list(pred)[:k]):
        if x in seen:
            continue
        seen.add(x)
        if x in sol:
            hits += 1
            ap += hits / (i + 1)
    return ap / n_expected


# ------------------------------------------------------------------------------------------------------------
# metrics.gldv2_ap_at_k
# ------------------------------------------------------------------------------------------------------------


def test_gldv2_ap_at_k_golden():
    x, a, b, c, y, z = 1000, 1, 2, 3, 1001, 7
    solution = [{a, b, c}, set(range(10, 160)), {z}]
    preds = [[x, a, a, y, b], list(range(10, 110)), []]
    np.testing.assert_allclose(M.gldv2_ap_at_k(preds, solution), [0.3, 1.0, 0.0], atol=1e-15)
    arr = np.full((3, 100), -1, dtype=np.int64)
    arr[0, :5] = preds[0]
    arr[1] = preds[1]
    aps = M.gldv2_ap_at_k(arr, solution)
    assert aps.dtype == np.float64 and aps.shape == (3,)
    np.testing.assert_allclose(aps, [0.3, 1.0, 0.0], atol=1e-15)
    assert M.gldv2_ap_at_k(np.zeros((0, 5), np.int64), []).shape == (0,)


@pytest.mark.parametrize("k", [1, 10, 100])
def test_gldv2_ap_at_k_matches_loop_reference(k):
    rng = np.random.default_rng(11)
    nq, n_db = 50, 200
    preds = rng.integers(0, n_db, size=(nq, 130))
    preds[:, 3::5] = preds[:, ::5][:, : preds[:, 3::5].shape[1]]  # duplicates
    preds[rng.random((nq, 130)) < 0.1] = -1  # faiss-style padding
    preds[:5, 40:] = -1  # short rows padded at the end
    solution = [rng.choice(n_db, int(rng.integers(1, 150)), replace=False).tolist() for _ in range(nq)]
    solution[0] = solution[0] + solution[0][:3]  # repeated ids: the official code divides by len(list)
    ref = np.array([_loop_ap(p, s, k) for p, s in zip(preds.tolist(), solution, strict=True)])
    ragged = [p[p >= 0] if i % 2 else p for i, p in enumerate(preds)]
    for predictions in (preds, list(preds), ragged):
        aps = M.gldv2_ap_at_k(predictions, solution, k=k)
        assert aps.shape == (nq,) and aps.dtype == np.float64
        if predictions is not ragged:
            np.testing.assert_allclose(aps, ref, rtol=0, atol=1e-12)
        assert abs(aps.mean() - M.gldv2_map_at_k(predictions, solution, k=k)) <= 1e-12
    # the vectorised path's mean is exactly gldv2_map_at_k
    assert np.sum(M.gldv2_ap_at_k(preds, solution, k=k)) / nq == M.gldv2_map_at_k(preds, solution, k=k)


# ------------------------------------------------------------------------------------------------------------
# eval sets: per_query and query_groups
# ------------------------------------------------------------------------------------------------------------


def _random_revisited(rng, nq=12, n_db=60) -> RevisitedEvalSet:
    gnd = []
    for q in range(nq):
        items = rng.choice(n_db, 12, replace=False)
        n_easy, n_hard, n_junk = (int(rng.integers(0, 4)) for _ in range(3))
        if q % 5 == 0:
            n_easy = n_hard = 0  # no positives: NaN, excluded from the mean
        gnd.append(
            {
                "easy": items[:n_easy].tolist(),
                "hard": items[4 : 4 + n_hard].tolist(),
                "junk": items[8 : 8 + n_junk].tolist(),
            }
        )
    return RevisitedEvalSet("rev", _paths("q", nq), _paths("g", n_db), tuple(gnd), (None,) * nq)


def test_revisited_per_query_nanmean_is_the_primary_score():
    rng = np.random.default_rng(3)
    es = _random_revisited(rng)
    nq, n_db = len(es.query_paths), len(es.gallery_paths)
    for trial in range(5):
        ranks = np.argsort(rng.random((nq, n_db)), axis=1)
        if trial == 4:
            ranks = ranks[:, :10]  # truncated ranking
        scores, pq = es.score_with_per_query(ranks)
        assert scores == es.score(ranks)
        assert pq.shape == (nq,) and pq.dtype == np.float64
        np.testing.assert_array_equal(pq, es.per_query(ranks))  # NaN == NaN here
        empty = np.array([not (g["easy"] or g["hard"]) for g in es.gnd])
        assert np.array_equal(np.isnan(pq), empty)
        primary = scores[es.primary_protocol][es.primary_metric]
        assert abs(np.nanmean(pq) - primary) <= 1e-12


def test_gldv2_per_query_nanmean_is_the_primary_score():
    rng = np.random.default_rng(4)
    nq, n_db, k = 14, 80, 10
    sol = tuple(tuple(rng.choice(n_db, int(rng.integers(1, 15)), replace=False).tolist()) for _ in range(nq))
    usage = tuple(rng.choice(["private", "public"], nq).tolist())
    es = GLDv2EvalSet("gl", _paths("q", nq), _paths("g", n_db), sol, usage, k=k)
    ranks = np.argsort(rng.random((nq, n_db)), axis=1)[:, :k]
    scores, pq = es.score_with_per_query(ranks)
    assert scores == es.score(ranks)
    np.testing.assert_array_equal(pq, es.per_query(ranks))
    assert np.array_equal(np.isnan(pq), np.asarray(usage) == "public")
    assert abs(np.nanmean(pq) - scores["private"][f"mAP@{k}"]) <= 1e-12
    rows = np.flatnonzero(np.asarray(usage) == "private")
    ref = [_loop_ap(ranks[i], sol[i], k) for i in rows]
    np.testing.assert_allclose(pq[rows], ref, rtol=0, atol=1e-12)
    # public-only set: public is primary
    pub = GLDv2EvalSet("gp", _paths("q", 3), _paths("g", n_db), sol[:3], ("public",) * 3, k=k)
    assert pub.primary_protocol == "public"
    pq = pub.per_query(ranks[:3])
    assert not np.isnan(pq).any()
    assert abs(pq.mean() - pub.score(ranks[:3])["public"][f"mAP@{k}"]) <= 1e-12


def test_revisited_query_groups():
    gnd = (
        {"easy": [0, 1], "hard": [2], "junk": []},  # q0: landmark A
        {"easy": [5], "hard": [6], "junk": []},  # q1: landmark B
        {"easy": [], "hard": [1], "junk": [7]},  # q2: A (shares 1 with q0, through hard)
        {"easy": [], "hard": [], "junk": [3]},  # q3: no positives -> singleton
        {"easy": [6], "hard": [], "junk": [0]},  # q4: B (shares 6 with q1)
        {"easy": [10], "hard": [], "junk": []},  # q5-q7: chain, 10 shared by q5 q6, 11 by q6 q7
        {"easy": [10, 11], "hard": [], "junk": []},
        {"easy": [], "hard": [11, 12], "junk": []},
        {"easy": [20], "hard": [], "junk": [0, 5]},  # q8: shares only junk with A and B -> own group
        {"easy": [], "hard": [], "junk": []},  # q9: no positives -> singleton
    )
    es = RevisitedEvalSet("rev", _paths("q", len(gnd)), _paths("g", 30), gnd, (None,) * len(gnd))
    groups = es.query_groups()
    assert groups.dtype == np.int64 and groups.shape == (len(gnd),)
    assert groups.tolist() == [0, 1, 0, 2, 1, 3, 3, 3, 4, 5]


def test_gldv2_query_groups():
    # q0-q2 via item 1, q2-q4 via item 3; q1, q5 via item 2; q3 alone; q6 joins q7's group only through q8
    sol = ((0, 1), (2,), (1, 3), (4,), (3, 5), (2, 2), (8,), (9,), (9, 8))
    usage = ("private", "public") * 4 + ("private",)
    es = GLDv2EvalSet("gl", _paths("q", len(sol)), _paths("g", 10), sol, usage)
    groups = es.query_groups()
    assert groups.dtype == np.int64
    assert groups.tolist() == [0, 1, 0, 2, 0, 1, 3, 3, 3]


# ------------------------------------------------------------------------------------------------------------
# evaluator: CompatibilityReport.per_query
# ------------------------------------------------------------------------------------------------------------

N_DB, N_Q, N_CLASSES = 24, 6, 6


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Gallery image i shows class i % 6 (solid colour + noise); query q shows class q."""
    root = tmp_path_factory.mktemp("pqimgs")
    rng = np.random.default_rng(0)

    def write(name, c):
        colour = np.array([40 * c % 256, 255 - 37 * c % 256, 90 * c % 256])
        arr = np.clip(colour[None, None] + rng.normal(0, 30, (16, 16, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(root / name)
        return root / name

    gallery = tuple(write(f"g{i}.jpg", i % N_CLASSES) for i in range(N_DB))
    queries = tuple(write(f"q{q}.jpg", q) for q in range(N_Q))
    return gallery, queries


class Colour(nn.Module):
    """Mean colour per channel through a fixed linear map (another map = another embedding space)."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.proj = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        with torch.no_grad():
            self.proj.weight.copy_(weight)

    def forward(self, x):
        return self.proj(x.mean(dim=(2, 3)))


def test_report_per_query(images, tmp_path):
    from bctbench.data import build_test_transform

    gallery, queries = images
    gnd = []
    for q in range(N_Q):
        same = [i for i in range(N_DB) if i % N_CLASSES == q]
        if q == N_Q - 1:  # a query without positives: None in the report
            gnd.append({"easy": [], "hard": [], "junk": same})
        else:
            gnd.append({"easy": same[:2], "hard": same[2:3], "junk": same[3:]})
    rev = RevisitedEvalSet("toy", queries, gallery, tuple(gnd), (None,) * N_Q)
    sol = tuple(tuple(i for i in range(N_DB) if i % N_CLASSES == q) for q in range(N_Q))
    gl = GLDv2EvalSet("toygl", queries, gallery, sol, ("private", "public") * (N_Q // 2), k=10)
    ev = CompatibilityEvaluator(
        [rev, gl],
        build_test_transform(16),
        cache=FeatureCache(tmp_path / "feats"),
        batch_size=8,
        backfill=BackfillSettings(enabled=False),
    )
    torch.manual_seed(0)
    encoders = {
        "old": Encoder(Colour(torch.eye(3)), "old:eye"),
        "new": Encoder(Colour(torch.randn(3, 3)), "new:rand"),
        "new->old": Encoder(Colour(torch.randn(3, 3)), "psi:rand"),
    }
    report = ev.evaluate(encoders)
    json.dumps(report.per_query, allow_nan=False)
    assert set(report.per_query) == {"toy", "toygl"}
    pairs = {(r["query_model"], r["gallery_model"]) for r in report.rows}
    assert ("new->old", "old") in pairs and len(pairs) == 5
    for es in (rev, gl):
        entry = report.per_query[es.name]
        assert entry["protocol"] == es.primary_protocol and entry["metric"] == es.primary_metric
        assert [entry["protocol"], entry["metric"]] == report.primary[es.name]
        assert entry["groups"] == es.query_groups().tolist() and len(entry["groups"]) == N_Q
        assert set(entry["scores"]) == {f"{q}|{g}" for q, g in pairs}
        for (q, g), values in ((tuple(key.split("|")), v) for key, v in entry["scores"].items()):
            assert len(values) == N_Q
            assert all(v is None or isinstance(v, float) for v in values)
            (row,) = [
                r["value"]
                for r in report.rows
                if (r["eval_set"], r["protocol"], r["query_model"], r["gallery_model"], r["metric"])
                == (es.name, entry["protocol"], q, g, entry["metric"])
            ]
            arr = np.array([math.nan if v is None else v for v in values])
            assert abs(np.nanmean(arr) - row) <= 1e-12
    assert report.per_query["toy"]["scores"]["old|old"][N_Q - 1] is None
    assert report.per_query["toy"]["groups"] == list(range(N_Q))
    gl_scores = report.per_query["toygl"]["scores"]["new|old"]
    assert [v is None for v in gl_scores] == [False, True] * (N_Q // 2)  # public queries: None
