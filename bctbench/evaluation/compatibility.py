"""The compatibility evaluator shared by every method.

For every eval set it embeds queries and gallery with each encoder it needs, ranks each (query model,
gallery model) pair and scores it with the eval set's own metric, producing tidy rows
``(eval_set, protocol, query_model, gallery_model, metric, value)``; it also computes backfilling curves and
keeps, per eval set and pair, the per-query scores of the primary (protocol, metric) with a landmark group
id per query (``CompatibilityReport.per_query``), so results can be bootstrapped over landmarks later.
Metric keys: ``test/{eval_set}/{protocol}/{query}-{gallery}/{metric}``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bctbench.errors import EvaluationError
from bctbench.evaluation.backfill import backfill_curves, random_order
from bctbench.evaluation.features import FeatureCache, extract_features, feature_key
from bctbench.evaluation.search import rank
from bctbench.progress import track

log = logging.getLogger(__name__)

DEFAULT_PAIRS = ("old-old", "new-old", "new-new", "old-new")


def metric_key(
    eval_set: str, protocol: str, query: str, gallery: str, metric: str, split: str = "test"
) -> str:
    return f"{split}/{eval_set}/{protocol}/{query}-{gallery}/{metric}"


@dataclass
class CompatibilityReport:
    """Tidy metric rows and backfilling curves of one evaluation.

    ``per_query[eval_set]`` = ``{"protocol": .., "metric": .. (the primary pair), "groups": list[int]
    (n_queries landmark group ids, ``query_groups``), "scores": {"<query_model>|<gallery_model>":
    list[float | None] (n_queries per-query scores, ``per_query``; None for NaN)}}``: JSON-ready; the
    NaN-mean of each score list is the matching primary row's value.
    """

    rows: list[dict] = field(default_factory=list)
    curves: list[dict] = field(default_factory=list)
    primary: dict[str, list[str]] = field(default_factory=dict)
    per_query: dict[str, dict] = field(default_factory=dict)

    def metric_dict(self) -> dict[str, float]:
        return {
            metric_key(r["eval_set"], r["protocol"], r["query_model"], r["gallery_model"], r["metric"]): r[
                "value"
            ]
            for r in self.rows
        }

    def value(self, eval_set: str, protocol: str, pair: str, metric: str) -> float:
        q, g = pair.rsplit("-", 1)  # query models may be transformations such as "new->old"
        for r in self.rows:
            if (r["eval_set"], r["protocol"], r["query_model"], r["gallery_model"], r["metric"]) == (
                eval_set,
                protocol,
                q,
                g,
                metric,
            ):
                return r["value"]
        raise KeyError((eval_set, protocol, pair, metric))

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame(
            self.rows, columns=["eval_set", "protocol", "query_model", "gallery_model", "metric", "value"]
        )


@dataclass
class BackfillSettings:
    """Which backfilling curves to compute: fractions, modes, and orders (``random`` with seeds, plus any
    method-provided score orders)."""

    n_fractions: int = 11
    seeds: Sequence[int] = (0,)
    modes: Sequence[str] = ("mixed", "merge")
    enabled: bool = True


class CompatibilityEvaluator:
    """Evaluate encoders on eval sets (see module docstring).

    ``transform``: the benchmark's test transform (same for every model). ``cache``: optional
    :class:`FeatureCache` (old gallery features are then computed once per benchmark). ``variant``: eval
    protocol variant string recorded in the cache key (e.g. ``"crop"`` or ``"advbct_compat"``).
    """

    def __init__(
        self,
        eval_sets: Sequence,
        transform,
        *,
        pairs: Sequence[str] = DEFAULT_PAIRS,
        cache: FeatureCache | str | Path | None = None,
        variant: str = "crop",
        batch_size: int = 128,
        num_workers: int = 0,
        device: str = "cpu",
        bf16: bool = False,
        backfill: BackfillSettings | None = None,
    ) -> None:
        if not eval_sets:
            raise EvaluationError("no eval sets to evaluate")
        self.eval_sets = list(eval_sets)
        self.transform = transform
        self.pairs = [tuple(p.split("-")) for p in pairs]
        self.cache = FeatureCache(cache) if isinstance(cache, (str, Path)) else cache
        self.variant = variant
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.device = device
        self.bf16 = bf16
        self.backfill = backfill or BackfillSettings()

    def features(self, encoder, eval_set, part: str) -> np.ndarray:
        """``float32[n, D]`` features of ``part`` ∈ {query, gallery} of ``eval_set`` (cached)."""
        if part == "query":
            paths, boxes = eval_set.query_paths, eval_set.query_boxes
        else:
            paths, boxes = eval_set.gallery_paths, None
        key = feature_key(encoder.identity, eval_set.name, part, self.variant, self.transform, paths, boxes)
        if self.cache is not None and (hit := self.cache.get(key, rows=len(paths))) is not None:
            return hit
        feats = extract_features(
            encoder,
            paths,
            boxes,
            self.transform,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            device=self.device,
            bf16=self.bf16,
            desc=f"{eval_set.name}/{part}/{encoder.identity[:20]}",
        )
        if self.cache is not None:
            self.cache.put(key, feats)
        return feats

    def evaluate(
        self,
        encoders: Mapping,
        *,
        backfill_orders: Mapping[str, Callable[[object, Mapping[str, np.ndarray]], np.ndarray]] | None = None,
    ) -> CompatibilityReport:
        """Evaluate ``encoders`` (``{"old": ..., "new": ..., ...}``) on every eval set.

        Besides the benchmark's pairs, every transformation encoder named ``"<a>-><b>"`` whose target ``b`` is
        an encoder (e.g. online backfilling's ``"new->old"`` = ψ∘φ_n) is scored as a query against ``b``'s
        gallery, and serves as the old-space query of merge-mode backfilling (``old`` otherwise).

        ``backfill_orders``: extra named orders, each a callable ``(eval_set, gallery_features_by_model) ->
        int64[N]`` permutation (e.g. Hot-refresh's uncertainty order), used besides the seeded random orders.
        """
        report = CompatibilityReport()
        pairs = list(self.pairs) + transformation_pairs(encoders)
        needed = sorted({m for pair in pairs for m in pair})
        missing = [m for m in needed if m not in encoders]
        if missing:
            raise EvaluationError(f"encoders missing for {missing} (given: {sorted(encoders)})")
        for es in self.eval_sets:
            report.primary[es.name] = [es.primary_protocol, es.primary_metric]
            per_query_scores: dict[str, list[float | None]] = {}
            report.per_query[es.name] = {
                "protocol": es.primary_protocol,
                "metric": es.primary_metric,
                "groups": [int(x) for x in es.query_groups().tolist()],
                "scores": per_query_scores,
            }
            q_feats = {m: self.features(encoders[m], es, "query") for m in needed}
            g_feats = {m: self.features(encoders[m], es, "gallery") for m in needed if "->" not in m}
            top1_old = None
            for q, g in track(pairs, f"search and score {es.name}", unit="query/gallery pairs"):
                if q_feats[q].shape[1] != g_feats[g].shape[1]:
                    raise EvaluationError(
                        f"{es.name}: {q}->{g} query dim {q_feats[q].shape[1]} != gallery dim {g_feats[g].shape[1]}"
                    )
                ranks = rank(q_feats[q], g_feats[g], topk=es.ranking_depth)
                scores, per_query = es.score_with_per_query(ranks)
                per_query_scores[f"{q}|{g}"] = [
                    None if math.isnan(v) else float(v) for v in per_query.tolist()
                ]
                for protocol, values in scores.items():
                    for metric, value in values.items():
                        report.rows.append(
                            {
                                "eval_set": es.name,
                                "protocol": protocol,
                                "query_model": q,
                                "gallery_model": g,
                                "metric": metric,
                                "value": float(value),
                            }
                        )
                if (q, g) == ("old", "old"):
                    top1_old = es.top1_correct(ranks)
            if self.backfill.enabled and {"old", "new"} <= set(encoders):
                report.curves.extend(self._curves(es, q_feats, g_feats, top1_old, backfill_orders or {}))
        return report

    def _curves(self, es, q_feats, g_feats, top1_old, extra_orders) -> list[dict]:
        n = g_feats["old"].shape[0]
        orders: list[tuple[str, int | None, np.ndarray]] = [
            ("random", s, random_order(n, s)) for s in self.backfill.seeds
        ]
        for name, fn in extra_orders.items():
            orders.append((name, None, np.asarray(fn(es, g_feats), dtype=np.int64)))
        fractions = np.round(np.linspace(0, 1, self.backfill.n_fractions), 10)
        merge_query = "new->old" if "new->old" in q_feats else "old"
        out = []
        jobs = [
            (mode, name, seed, order)
            for mode in self.backfill.modes
            if not (mode == "mixed" and q_feats["new"].shape[1] != g_feats["old"].shape[1])  # no shared space
            and not (mode == "merge" and merge_query not in q_feats)  # no old-space query features asked for
            for name, seed, order in orders
        ]
        for mode, name, seed, order in track(jobs, f"backfilling curves {es.name}", unit="curves"):
            curves = backfill_curves(
                es,
                q_feats["new"],
                g_feats["old"],
                g_feats["new"],
                order,
                order_name=name,
                order_seed=seed,
                fractions=fractions,
                mode=mode,
                query_old=q_feats.get(merge_query),
                old_top1=top1_old,
            )
            for c in curves:
                d = c.to_dict()
                if mode == "merge":
                    d["old_space_query"] = merge_query
                out.append(d)
        return out


def transformation_pairs(encoders: Mapping) -> list[tuple[str, str]]:
    """``[("a->b", "b"), ...]`` for every encoder named ``"a->b"`` whose target ``b`` is also an encoder."""
    out = []
    for name in sorted(encoders):
        if "->" in name:
            target = name.split("->", 1)[1]
            if target in encoders:
                out.append((name, target))
    return out
