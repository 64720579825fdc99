"""Backfilling curves (docs/evaluation.md §6): the gallery re-embedded progressively by the new model.

A backfill ``order`` is a permutation of the gallery rows; at fraction t the first ⌊t·N⌋ rows of the order
carry new features. Prefixes of one permutation make the stages nested.

Modes:

* ``mixed`` — one query model (new) against a gallery of old and new embeddings (every BCT method).
* ``merge`` — distance rank merge: each gallery item is scored in its own space (old query against
  non-backfilled items, new query against backfilled ones) and all items ranked together. Implemented as one
  inner-product search over concatenated spaces: q' = [q_old, q_new], g'_i = [g_old_i, 0] or [0, g_new_i],
  so ⟨q', g'_i⟩ is exactly the per-space cosine (q' has the same norm √2 for every query).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bctbench.errors import EvaluationError
from bctbench.evaluation import metrics
from bctbench.evaluation.search import rank


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def random_order(n: int, seed: int = 0) -> np.ndarray:
    """``numpy.random.default_rng(seed).permutation(n)`` (docs/evaluation.md §6.2)."""
    return np.random.default_rng(seed).permutation(n).astype(np.int64)


def order_from_scores(scores: np.ndarray) -> np.ndarray:
    """Descending scores, ties by lower index: ``int64[N]``."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1 or not np.isfinite(scores).all():
        raise EvaluationError("backfill scores must be a finite float[N] array")
    return np.argsort(-scores, kind="stable").astype(np.int64)


def fractions_grid(n_points: int = 11) -> np.ndarray:
    """``n_points`` evenly spaced fractions from 0 to 1 inclusive."""
    return np.round(np.linspace(0.0, 1.0, n_points), 10)


def mixed_gallery(
    gallery_old: np.ndarray, gallery_new: np.ndarray, order: np.ndarray, fraction: float
) -> np.ndarray:
    """``float32[N, D]``: rows ``order[:⌊fraction·N⌋]`` from ``gallery_new``, the rest from ``gallery_old``."""
    n = gallery_old.shape[0]
    out = _unit(gallery_old).copy()
    take = order[: int(np.floor(fraction * n + 1e-9))]
    out[take] = _unit(gallery_new[take])
    return out


def merge_features(
    query_old: np.ndarray,
    query_new: np.ndarray,
    gallery_old: np.ndarray,
    gallery_new: np.ndarray,
    order: np.ndarray,
    fraction: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated-space features whose inner products implement distance rank merge (module docstring).

    Returns ``(query[nq, Do+Dn], gallery[N, Do+Dn])``.
    """
    n, d_old = gallery_old.shape
    d_new = gallery_new.shape[1]
    q = np.concatenate([_unit(query_old), _unit(query_new)], axis=1)
    g = np.zeros((n, d_old + d_new), np.float32)
    backfilled = np.zeros(n, bool)
    backfilled[order[: int(np.floor(fraction * n + 1e-9))]] = True
    g[~backfilled, :d_old] = _unit(gallery_old[~backfilled])
    g[backfilled, d_old:] = _unit(gallery_new[backfilled])
    return q, g


@dataclass
class BackfillCurve:
    """Curve of one eval set / protocol / metric: ``values[i]`` at ``fractions[i]``; NFR vs old→old top-1."""

    eval_set: str
    protocol: str
    metric: str
    mode: str
    order: str
    order_seed: int | None
    fractions: list[float]
    values: list[float]
    nfr: list[float]

    @property
    def auc(self) -> float:
        return float(metrics.backfill_auc(self.fractions, self.values))

    def to_dict(self) -> dict:
        return {
            "eval_set": self.eval_set,
            "protocol": self.protocol,
            "metric": self.metric,
            "mode": self.mode,
            "order": self.order,
            "order_seed": self.order_seed,
            "fractions": list(self.fractions),
            "values": list(self.values),
            "auc": self.auc,
            "nfr": list(self.nfr),
        }


def backfill_curves(
    eval_set,
    query_new: np.ndarray,
    gallery_old: np.ndarray,
    gallery_new: np.ndarray,
    order: np.ndarray,
    *,
    order_name: str,
    order_seed: int | None = None,
    fractions: Sequence[float] | None = None,
    mode: str = "mixed",
    query_old: np.ndarray | None = None,
    old_top1: dict[str, np.ndarray] | None = None,
) -> list[BackfillCurve]:
    """Backfilling curves of ``eval_set`` (one per protocol, its primary metric) for one order.

    ``query_*``: ``float[nq, D]``; ``gallery_*``: ``float[N, D]`` (rows = gallery items); ``order``:
    ``int64[N]`` permutation. ``mode="merge"`` needs ``query_old`` (old-space query). ``old_top1`` (per
    protocol, from the old→old ranking) enables the negative-flip rate of each stage.
    """
    n = gallery_old.shape[0]
    if gallery_new.shape[0] != n:
        raise EvaluationError(f"{eval_set.name}: old and new galleries differ in size")
    order = np.asarray(order, dtype=np.int64)
    if order.shape != (n,) or not np.array_equal(np.sort(order), np.arange(n)):
        raise EvaluationError(f"{eval_set.name}: backfill order is not a permutation of the {n} gallery rows")
    if mode not in ("mixed", "merge"):
        raise EvaluationError(f"unknown backfill mode '{mode}' (mixed | merge)")
    if mode == "merge" and query_old is None:
        raise EvaluationError("merge mode needs the old-space query features")
    fractions = list(fractions_grid() if fractions is None else fractions)
    metric = eval_set.primary_metric
    per_protocol = {p: ([], []) for p in eval_set.protocols}
    for t in fractions:
        if mode == "mixed":
            ranks = rank(
                query_new, mixed_gallery(gallery_old, gallery_new, order, t), topk=eval_set.ranking_depth
            )
        else:
            q, g = merge_features(query_old, query_new, gallery_old, gallery_new, order, t)
            ranks = rank(q, g, topk=eval_set.ranking_depth)
        scores = eval_set.score(ranks)
        top1 = eval_set.top1_correct(ranks) if old_top1 is not None else None
        for p, (values, nfr) in per_protocol.items():
            values.append(scores[p][metric])
            nfr.append(
                float(metrics.negative_flip_rate(old_top1[p], top1[p])) if top1 is not None else float("nan")
            )
    return [
        BackfillCurve(
            eval_set.name,
            p,
            metric,
            mode,
            order_name,
            order_seed,
            [float(t) for t in fractions],
            [float(v) for v in values],
            nfr,
        )
        for p, (values, nfr) in per_protocol.items()
    ]
