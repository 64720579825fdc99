"""Fixture RunResults for the results / leaderboard / tracking tests (built in code, deterministic)."""

from __future__ import annotations

import numpy as np

from bctbench.results import RunResult

BENCH = "synth_fixture"
FRACTIONS = [0.0, 0.25, 0.5, 0.75, 1.0]
PRIMARY = {"rsynth": ["medium", "mAP"], "gsynth": ["private", "mAP@100"]}
OLD_SELF = {"rsynth": 0.40, "gsynth": 0.20}
# method -> (seeds, {eval_set: (cross new->old, self new->new)} at seed 0, flags)
METHODS = {
    "independent": ([0, 1, 2], {"rsynth": (0.05, 0.60), "gsynth": (0.02, 0.30)}, []),
    "bct": ([0, 1, 2], {"rsynth": (0.45, 0.55), "gsynth": (0.24, 0.27)}, []),
    "l2": ([0, 1], {"rsynth": (0.42, 0.50), "gsynth": (0.19, 0.26)}, []),
    "advbct": ([0], {"rsynth": (0.47, 0.57), "gsynth": (0.25, 0.28)}, ["advbct_compat"]),
}


def _rows(eval_set: str, protocol: str, metric: str, old: float, cross: float, self_: float) -> list[dict]:
    return [
        {
            "eval_set": eval_set,
            "protocol": protocol,
            "query_model": q,
            "gallery_model": g,
            "metric": metric,
            "value": v,
        }
        for (q, g), v in ((("old", "old"), old), (("new", "old"), cross), (("new", "new"), self_))
    ]


# per eval set: landmark group of each query (4 landmarks x 3 queries; gsynth has one unscored query)
GROUPS = {"rsynth": [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3], "gsynth": [0, 0, 1, 1, 2, 2, 3, 3, 3, 4, 4, 5]}


def _per_query(method: str, seed: int, eval_set: str, values: dict[str, float]) -> dict:
    """Per-query scores whose mean over scored queries is each pair's value: a landmark pattern shared by
    every run plus a small run-specific one (both zero-mean)."""
    groups = np.asarray(GROUPS[eval_set])
    nq = groups.size
    shared = 0.06 * np.sin(1.0 + 2.3 * groups)
    rng = np.random.default_rng([len(method), seed, nq])
    scores = {}
    for pair, v in values.items():
        own = 0.02 * rng.standard_normal(nq)
        x = v + shared + own
        if eval_set == "gsynth":
            x[-1] = np.nan  # a query of another usage: not scored
        scored = ~np.isnan(x)
        x[scored] += v - x[scored].mean()
        scores[pair] = [None if np.isnan(a) else float(a) for a in x]
    protocol, metric = PRIMARY[eval_set]
    return {"protocol": protocol, "metric": metric, "groups": GROUPS[eval_set], "scores": scores}


def _curve(mode: str, order: str, order_seed: int, values: list[float]) -> dict:
    """One rsynth/medium/mAP backfilling curve over FRACTIONS with its trapezoid AUC."""
    auc = sum(
        (b - a) * (x + y) / 2
        for a, b, x, y in zip(FRACTIONS, FRACTIONS[1:], values, values[1:], strict=False)
    )
    return {
        "eval_set": "rsynth",
        "protocol": "medium",
        "metric": "mAP",
        "mode": mode,
        "order": order,
        "order_seed": order_seed,
        "fractions": FRACTIONS,
        "values": values,
        "auc": round(auc, 8),
    }


def make_result(method: str, seed: int) -> RunResult:
    """One deterministic fixture run: two eval sets, primary and secondary protocols, backfill curves."""
    seeds, vals, flags = METHODS[method]
    d = 0.01 * seed - 0.005 * (method == "l2") * seed  # per-seed spread
    metrics: list[dict] = []
    per_query = {}
    for es, (cross, self_) in vals.items():
        protocol, metric = PRIMARY[es]
        old_k = OLD_SELF[es] + 0.004 * seed  # old model k of seed k
        metrics += _rows(es, protocol, metric, old_k, round(cross + d, 6), round(self_ + d, 6))
        values = {"old|old": old_k, "new|old": round(cross + d, 6), "new|new": round(self_ + d, 6)}
        old_pq = _per_query("old-model", seed, es, {"old|old": old_k})
        mine = _per_query(method, seed, es, values)
        mine["scores"]["old|old"] = old_pq["scores"]["old|old"]  # the same old model k for every method
        per_query[es] = mine
        other = "easy" if es == "rsynth" else "public"
        metrics += _rows(es, other, metric, OLD_SELF[es] + 0.1, round(cross + 0.1, 6), round(self_ + 0.1, 6))
    cross, self_ = vals["rsynth"]
    cross, self_ = cross + d, self_ + d
    curves = []
    orders = [("random", 0), ("random", 1)] + ([("uncertainty", 0)] if method == "bct" else [])
    for order, order_seed in orders:
        bump = 0.02 if order == "uncertainty" else 0.005 * order_seed
        values = [round(cross + (self_ - cross) * t + (bump if 0 < t < 1 else 0.0), 6) for t in FRACTIONS]
        curves.append(_curve("mixed", order, order_seed, values))
    backfill_mode = "mixed"
    if method == "independent":  # training-free distance rank merge: from old→old up to new→new
        backfill_mode = "merge"
        values = [round(OLD_SELF["rsynth"] + (self_ - OLD_SELF["rsynth"]) * t**2, 6) for t in FRACTIONS]
        curves.append({**_curve("merge", "random", 0, values), "old_space_query": "old"})
    return RunResult(
        benchmark=BENCH,
        method=method,
        seed=seed,
        metrics=metrics,
        curves={"backfill": curves, "backfill_mode": backfill_mode},
        primary=PRIMARY,
        method_hparams={"lr": 0.01, "lambda": 1.0},
        flags=list(flags),
        benchmark_sha256="b" * 64,
        old_identity=f"{seed:x}" * 64,
        split_sha256="5" * 64,
        per_query=per_query,
        git={"sha": "0" * 40, "dirty": False},
        env={
            "python": "3.11.7",
            "torch": "2.5.0",
            "lightning": "2.6.6",
            "timm": None,
            "faiss": None,
            "numpy": "2.4.6",
            "cuda": None,
            "platform": "test",
        },
        eval_variants={"query_crop": True, "dataset_sha256": "d" * 64},
        wandb_run=None,
        timings={"fit": 1.5, "test": 0.5},
        created_at="2025-01-01T00:00:00+00:00",
    )


def all_fixture_results() -> list[RunResult]:
    return [make_result(m, s) for m, (seeds, _, _) in METHODS.items() for s in seeds]
