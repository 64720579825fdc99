"""CompatibilityEvaluator, feature extraction/cache and backfilling curves on tiny on-disk eval sets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from bctbench.errors import EvaluationError
from bctbench.evaluation.backfill import backfill_curves, merge_features, mixed_gallery, random_order
from bctbench.evaluation.compatibility import BackfillSettings, CompatibilityEvaluator
from bctbench.evaluation.evalsets import GLDv2EvalSet, RevisitedEvalSet
from bctbench.evaluation.features import FeatureCache
from bctbench.evaluation.search import rank
from bctbench.method import Encoder

N_DB, N_Q, N_CLASSES = 24, 6, 6


def _colour(c: int) -> tuple[int, int, int]:
    return (40 * c % 256, 255 - 37 * c % 256, 90 * c % 256)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Gallery image i shows class i % 6 (solid colour + noise); query q shows class q."""
    root = tmp_path_factory.mktemp("evalimgs")
    rng = np.random.default_rng(0)

    def write(name, c):
        arr = np.clip(np.array(_colour(c))[None, None] + rng.normal(0, 8, (16, 16, 3)), 0, 255).astype(
            np.uint8
        )
        Image.fromarray(arr).save(root / name)
        return root / name

    gallery = tuple(write(f"g{i}.jpg", i % N_CLASSES) for i in range(N_DB))
    queries = tuple(write(f"q{q}.jpg", q) for q in range(N_Q))
    return gallery, queries


def _revisited(images) -> RevisitedEvalSet:
    gallery, queries = images
    gnd = []
    for q in range(N_Q):
        same = [i for i in range(N_DB) if i % N_CLASSES == q]
        gnd.append({"easy": same[:2], "hard": same[2:3], "junk": same[3:], "bbx": [0, 0, 16, 16]})
    return RevisitedEvalSet("toy", queries, gallery, tuple(gnd), (None,) * N_Q)


def _gldv2(images) -> GLDv2EvalSet:
    gallery, queries = images
    sol = tuple(tuple(i for i in range(N_DB) if i % N_CLASSES == q) for q in range(N_Q))
    return GLDv2EvalSet("toygl", queries, gallery, sol, ("private", "public") * (N_Q // 2), k=10)


class MeanColour(nn.Module):
    """A deterministic 'encoder': mean colour per channel, optionally rotated (another embedding space)."""

    def __init__(self, rotate: bool = False, dim: int = 3) -> None:
        super().__init__()
        self.proj = nn.Linear(3, dim, bias=False)
        with torch.no_grad():
            w = torch.eye(3) if not rotate else torch.tensor([[0.0, 1, 0], [0, 0, 1], [1, 0, 0]])
            self.proj.weight.copy_(w if dim == 3 else torch.randn(dim, 3))
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.proj(x.mean(dim=(2, 3)))


def _evaluator(eval_sets, tmp_path, **kw):
    from bctbench.data import build_test_transform

    return CompatibilityEvaluator(
        eval_sets, build_test_transform(16), cache=FeatureCache(tmp_path / "feats"), batch_size=8, **kw
    )


def test_rows_pairs_and_metric_keys(images, tmp_path):
    ev = _evaluator([_revisited(images), _gldv2(images)], tmp_path, backfill=BackfillSettings(seeds=(0, 1)))
    old, new = MeanColour(), MeanColour()
    report = ev.evaluate({"old": Encoder(old, "old:a"), "new": Encoder(new, "new:b")})
    keys = report.metric_dict()
    assert keys["test/toy/medium/new-old/mAP"] == pytest.approx(1.0)  # same encoder: perfect class retrieval
    assert "test/toygl/private/old-new/mAP@10" in keys and "test/toygl/public/new-new/mAP@10" in keys
    assert {r["protocol"] for r in report.rows if r["eval_set"] == "toy"} == {"easy", "medium", "hard"}
    assert report.primary == {"toy": ["medium", "mAP"], "toygl": ["private", "mAP@10"]}
    curves = [c for c in report.curves if c["eval_set"] == "toy" and c["protocol"] == "medium"]
    assert [(c["mode"], c["order_seed"]) for c in curves] == [
        ("mixed", 0),
        ("mixed", 1),
        ("merge", 0),
        ("merge", 1),
    ]
    mixed, merge = curves[0], curves[2]
    assert mixed["values"][0] == report.value("toy", "medium", "new-old", "mAP")
    assert mixed["values"][-1] == report.value("toy", "medium", "new-new", "mAP")
    assert merge["values"][0] == report.value("toy", "medium", "old-old", "mAP")
    assert merge["values"][-1] == report.value("toy", "medium", "new-new", "mAP")
    assert merge["old_space_query"] == "old"
    for c in curves:
        assert c["nfr"] == [0.0] * 11  # identical models: no negative flips


def test_transformation_encoder_is_scored_and_queries_the_old_space_in_merge_mode(images, tmp_path):
    """An encoder named "new->old" (e.g. online backfilling's ψ∘φ_n) is scored against the old gallery and is
    the old-space query of merge mode, so the merge curve starts at its cross-test and ends at new→new."""
    ev = _evaluator([_revisited(images)], tmp_path)
    torch.manual_seed(0)
    old, new, psi = MeanColour(), MeanColour(rotate=True), MeanColour(dim=5)
    report = ev.evaluate(
        {"old": Encoder(old, "old:a"), "new": Encoder(new, "new:rot"), "new->old": Encoder(new, "psi:rot")}
    )
    rows = {(r["query_model"], r["gallery_model"]) for r in report.rows}
    assert ("new->old", "old") in rows and ("new->old", "new") not in rows
    assert report.value("toy", "medium", "new->old-old", "mAP") < report.value(
        "toy", "medium", "old-old", "mAP"
    )
    assert "test/toy/medium/new->old-old/mAP" in report.metric_dict()
    (merge,) = [c for c in report.curves if c["protocol"] == "medium" and c["mode"] == "merge"]
    assert merge["old_space_query"] == "new->old"
    assert merge["values"][0] == report.value("toy", "medium", "new->old-old", "mAP")
    assert merge["values"][-1] == report.value("toy", "medium", "new-new", "mAP")
    # a new space of another dimension has no mixed gallery: merge curves only
    ev = _evaluator([_revisited(images)], tmp_path, pairs=("old-old", "new-new"))
    report = ev.evaluate({"old": Encoder(old, "old:a"), "new": Encoder(psi, "new:5d")})
    assert {c["mode"] for c in report.curves} == {"merge"}


def test_incompatible_spaces_give_low_cross_test_and_cache_is_reused(images, tmp_path):
    ev = _evaluator([_revisited(images)], tmp_path)
    old, new = MeanColour(), MeanColour(rotate=True)
    r1 = ev.evaluate({"old": Encoder(old, "old:a"), "new": Encoder(new, "new:rot")})
    assert r1.value("toy", "medium", "new-old", "mAP") < r1.value("toy", "medium", "new-new", "mAP")
    calls = old.calls
    ev.evaluate({"old": Encoder(old, "old:a"), "new": Encoder(new, "new:rot")})
    assert old.calls == calls, "old features come from the cache the second time"


def test_feature_errors_are_clear(images, tmp_path):
    ev = _evaluator([_revisited(images)], tmp_path)

    class NaNs(nn.Module):
        def forward(self, x):
            return torch.full((x.shape[0], 3), float("nan"))

    class WrongShape(nn.Module):
        def forward(self, x):
            return torch.zeros(x.shape[0], 3, 2)

    with pytest.raises(EvaluationError, match="NaN/inf features"):
        ev.evaluate({"old": Encoder(MeanColour(), "o"), "new": Encoder(NaNs(), "nan")})
    with pytest.raises(EvaluationError, match=r"expected \[B, D\]"):
        ev.evaluate({"old": Encoder(MeanColour(), "o"), "new": WrongShapeEncoder(WrongShape())})
    with pytest.raises(EvaluationError, match="dim"):
        ev.evaluate({"old": Encoder(MeanColour(), "o"), "new": Encoder(MeanColour(dim=5), "five")})
    with pytest.raises(EvaluationError, match="encoders missing"):
        ev.evaluate({"old": Encoder(MeanColour(), "o")})


class WrongShapeEncoder(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net
        self.identity = "wrong"

    def forward(self, x):
        return self.net(x)


def test_eval_set_validation(images):
    gallery, queries = images
    with pytest.raises(EvaluationError, match="empty gallery"):
        RevisitedEvalSet(
            "x", queries, (), tuple({"easy": [], "hard": [], "junk": []} for _ in queries), (None,) * N_Q
        )
    with pytest.raises(EvaluationError, match=r"gnd\[0\]\['easy'\] has index 99"):
        RevisitedEvalSet("x", queries[:1], gallery, ({"easy": [99], "hard": [], "junk": []},), (None,))
    with pytest.raises(EvaluationError, match="outside the gallery"):
        GLDv2EvalSet("g", queries[:1], gallery, ((0, 999),), ("private",))


def test_merge_mode_with_identical_models_equals_plain_retrieval():
    rng = np.random.default_rng(1)
    q, g = rng.normal(size=(5, 8)).astype(np.float32), rng.normal(size=(30, 8)).astype(np.float32)
    order = random_order(30, 0)
    for t in (0.0, 0.3, 1.0):
        mq, mg = merge_features(q, q, g, g, order, t)
        assert np.array_equal(rank(mq, mg), rank(q, g))
        assert np.array_equal(rank(q, mixed_gallery(g, g, order, t)), rank(q, g))


def test_curve_endpoints_merge_mode(images):
    es = _revisited(images)
    rng = np.random.default_rng(2)
    g_old, g_new = rng.normal(size=(N_DB, 4)), rng.normal(size=(N_DB, 4))
    q_old, q_new = rng.normal(size=(N_Q, 4)), rng.normal(size=(N_Q, 4))
    (curve,) = [
        c
        for c in backfill_curves(
            es, q_new, g_old, g_new, random_order(N_DB), order_name="random", mode="merge", query_old=q_old
        )
        if c.protocol == "medium"
    ]
    assert curve.values[0] == es.score(rank(q_old, g_old))["medium"]["mAP"]  # exactly old→old
    assert curve.values[-1] == es.score(rank(q_new, g_new))["medium"]["mAP"]  # exactly new→new
    with pytest.raises(EvaluationError, match="not a permutation"):
        backfill_curves(es, q_new, g_old, g_new, np.zeros(N_DB, np.int64), order_name="bad")
