"""Fixture RunResults for the results / leaderboard / tracking tests (built in code, deterministic)."""

from __future__ import annotations

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
    for es, (cross, self_) in vals.items():
        protocol, metric = PRIMARY[es]
        metrics += _rows(es, protocol, metric, OLD_SELF[es], round(cross + d, 6), round(self_ + d, 6))
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
        old_checkpoint_sha256="o" * 64,
        split_sha256="s" * 64,
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
        eval_variants={"query_crop": True},
        wandb_run=None,
        timings={"fit": 1.5, "test": 0.5},
        created_at="2025-01-01T00:00:00+00:00",
    )


def all_fixture_results() -> list[RunResult]:
    return [make_result(m, s) for m, (seeds, _, _) in METHODS.items() for s in seeds]
