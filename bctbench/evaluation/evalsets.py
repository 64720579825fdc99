"""Eval sets: what to embed (query and gallery image paths) and how to score a ranking.

Each eval set owns its metric, so the evaluator stays generic. Loaders in ``datamodules/`` build these from
the on-disk formats (revisited ``gnd_*.pkl`` + ``jpg/``; GLDv2 ``index.csv``/``test.csv``/solution CSV).

Orientation: every ``ranks`` argument is ``int64[n_queries, k]``, rows are queries, best first, values are
gallery row indices.

Besides the aggregate :meth:`score`, each eval set gives the per-query scores of its primary (protocol,
metric) (:meth:`per_query`, whose NaN-mean is the primary value) and a landmark group id per query derived
from the ground truth (:meth:`query_groups`), so results can be bootstrapped over landmarks later.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bctbench.errors import EvaluationError
from bctbench.evaluation import metrics

Box = tuple[float, float, float, float]

REVISITED_PROTOCOLS = ("easy", "medium", "hard")
GLDV2_PROTOCOLS = ("private", "public")


def _as_index(values: object) -> np.ndarray:
    """``int64[n]`` from a sequence of gallery indices (None = empty)."""
    return np.asarray(values if values is not None else (), dtype=np.int64).reshape(-1)


def _check_ranks(name: str, ranks: np.ndarray, n_queries: int, n_gallery: int) -> np.ndarray:
    ranks = np.asarray(ranks)
    if ranks.ndim != 2 or ranks.shape[0] != n_queries:
        raise EvaluationError(
            f"{name}: ranks must be int64[n_queries={n_queries}, k], got shape {tuple(ranks.shape)}"
        )
    if ranks.size and (ranks.min() < 0 or ranks.max() >= n_gallery):
        raise EvaluationError(f"{name}: ranks hold gallery indices outside [0, {n_gallery})")
    return ranks.astype(np.int64, copy=False)


def _groups_from_positives(positives: Sequence[np.ndarray]) -> np.ndarray:
    """``int64[n_queries]`` landmark group ids: connected components of "shares a positive gallery item".

    ``positives[q]`` holds query ``q``'s positive gallery indices (any order, repeats allowed; empty = a
    singleton group). Union-find over queries; ids are numbered ``0 .. G-1`` in order of each group's first
    query.
    """
    parent = list(range(len(positives)))

    def find(q: int) -> int:
        root = q
        while parent[root] != root:
            root = parent[root]
        while parent[q] != root:  # path compression
            parent[q], q = root, parent[q]
        return root

    owner: dict[int, int] = {}  # gallery item -> first query holding it
    for q, items in enumerate(positives):
        for item in np.unique(np.asarray(items, dtype=np.int64)).tolist():
            first = owner.setdefault(item, q)
            if first != q:
                a, b = find(first), find(q)
                if a != b:
                    parent[max(a, b)] = min(a, b)  # the root is the smallest query of its group
    ids: dict[int, int] = {}
    return np.fromiter((ids.setdefault(find(q), len(ids)) for q in range(len(positives))), np.int64)


@dataclass(frozen=True)
class RevisitedEvalSet:
    """ROxford5k / RParis6k-style eval set (revisited protocol, Easy/Medium/Hard).

    ``gnd[i]`` holds ``easy``, ``hard``, ``junk`` (0-based gallery indices) and ``bbx`` for query ``i``.
    ``query_boxes[i]`` is the crop box applied before any transform, or None (the ``advbct_compat`` variant).
    """

    name: str
    query_paths: tuple[Path, ...]
    gallery_paths: tuple[Path, ...]
    gnd: tuple[dict, ...]
    query_boxes: tuple[Box | None, ...]
    kind: str = field(default="revisited", init=False)

    def __post_init__(self) -> None:
        n_db = len(self.gallery_paths)
        if n_db == 0:
            raise EvaluationError(f"{self.name}: empty gallery")
        if len(self.gnd) != len(self.query_paths) or len(self.query_boxes) != len(self.query_paths):
            raise EvaluationError(
                f"{self.name}: {len(self.query_paths)} queries but {len(self.gnd)} gnd entries "
                f"and {len(self.query_boxes)} boxes"
            )
        for qi, g in enumerate(self.gnd):
            for key in ("easy", "hard", "junk"):
                idx = np.asarray(g.get(key, []), dtype=np.int64)
                if idx.size and (idx.min() < 0 or idx.max() >= n_db):
                    raise EvaluationError(
                        f"{self.name}: gnd[{qi}]['{key}'] has index {int(idx.max() if idx.max() >= n_db else idx.min())} "
                        f"outside the gallery [0, {n_db})"
                    )

    @property
    def protocols(self) -> tuple[str, ...]:
        return REVISITED_PROTOCOLS

    @property
    def ranking_depth(self) -> int | None:
        """Ranking length needed for scoring: None = the whole gallery (revisited AP needs every positive)."""
        return None

    @property
    def primary_protocol(self) -> str:
        return "medium"

    @property
    def primary_metric(self) -> str:
        return "mAP"

    def score(self, ranks: np.ndarray) -> dict[str, dict[str, float]]:
        """Return ``{protocol: {"mAP": .., "mP@1": .., "mP@5": .., "mP@10": ..}}`` (fractions in [0, 1])."""
        return self.score_with_per_query(ranks)[0]

    def score_with_per_query(self, ranks: np.ndarray) -> tuple[dict[str, dict[str, float]], np.ndarray]:
        """:meth:`score` and :meth:`per_query` of ``ranks`` (``int64[n_queries, k]``) from one ranking pass:
        ``(scores, float64[n_queries])``."""
        ranks = _check_ranks(self.name, ranks, len(self.query_paths), len(self.gallery_paths))
        out: dict[str, dict[str, float]] = {}
        per_query = None
        for protocol in self.protocols:
            gnd_p = metrics.revisited_gnd(list(self.gnd), protocol)
            m_ap, aps, mp_at_k, _ = metrics.revisited_map(ranks, gnd_p, kappas=(1, 5, 10))
            out[protocol] = {"mAP": float(m_ap)} | {
                f"mP@{k}": float(v) for k, v in zip((1, 5, 10), mp_at_k, strict=True)
            }
            if protocol == self.primary_protocol:
                per_query = np.asarray(aps, dtype=np.float64)
        assert per_query is not None
        return out, per_query

    def per_query(self, ranks: np.ndarray) -> np.ndarray:
        """``float64[n_queries]``: per-query AP at the primary protocol (medium) of ``ranks``
        (``int64[n_queries, k]``); NaN for queries without positives. Its NaN-mean is the primary mAP."""
        ranks = _check_ranks(self.name, ranks, len(self.query_paths), len(self.gallery_paths))
        gnd_p = metrics.revisited_gnd(list(self.gnd), self.primary_protocol)
        return np.asarray(metrics.revisited_map(ranks, gnd_p, kappas=())[1], dtype=np.float64)

    def query_groups(self) -> np.ndarray:
        """``int64[n_queries]``: landmark group id per query, from the ground truth only: queries sharing a
        positive (``easy`` ∪ ``hard``) gallery item, directly or through a chain, share a group; a query
        without positives is a group of its own. Ids are ``0 .. G-1`` in order of first query."""
        return _groups_from_positives(
            [np.concatenate([_as_index(g.get("easy")), _as_index(g.get("hard"))]) for g in self.gnd]
        )

    def top1_correct(self, ranks: np.ndarray) -> dict[str, np.ndarray]:
        """Per protocol, ``float[n_queries]``: 1.0/0.0 whether the first non-junk result is a positive, NaN
        for queries without positives."""
        ranks = _check_ranks(self.name, ranks, len(self.query_paths), len(self.gallery_paths))
        return {
            p: metrics.revisited_top1_correct(ranks, metrics.revisited_gnd(list(self.gnd), p))
            for p in self.protocols
        }


@dataclass(frozen=True)
class GLDv2EvalSet:
    """GLDv2 retrieval eval set: gallery = ``index.csv``; queries = scored rows of the solution file.

    ``solution[i]`` is the list of relevant gallery row indices of query ``i``; ``usage[i]`` is
    ``"private"`` or ``"public"``. Rows with ``images == None`` or another Usage are not queries.
    """

    name: str
    query_paths: tuple[Path, ...]
    gallery_paths: tuple[Path, ...]
    solution: tuple[tuple[int, ...], ...]
    usage: tuple[str, ...]
    k: int = 100
    kind: str = field(default="gldv2", init=False)

    def __post_init__(self) -> None:
        n_db = len(self.gallery_paths)
        if n_db == 0:
            raise EvaluationError(f"{self.name}: empty gallery")
        if not (len(self.solution) == len(self.usage) == len(self.query_paths)):
            raise EvaluationError(f"{self.name}: queries, solution and usage lengths differ")
        for qi, sol in enumerate(self.solution):
            if not sol:
                raise EvaluationError(f"{self.name}: query {qi} has an empty solution (filter it out)")
            if min(sol) < 0 or max(sol) >= n_db:
                raise EvaluationError(
                    f"{self.name}: solution of query {qi} points outside the gallery [0, {n_db})"
                )
        bad = sorted(set(self.usage) - set(GLDV2_PROTOCOLS))
        if bad:
            raise EvaluationError(f"{self.name}: unknown usage values {bad}")

    @property
    def query_boxes(self) -> tuple[None, ...]:
        return (None,) * len(self.query_paths)

    @property
    def protocols(self) -> tuple[str, ...]:
        return tuple(p for p in GLDV2_PROTOCOLS if p in self.usage)

    @property
    def ranking_depth(self) -> int | None:
        """Ranking length needed for scoring (top-k of mAP@k)."""
        return self.k

    @property
    def primary_protocol(self) -> str:
        return "private" if "private" in self.usage else self.protocols[0]

    @property
    def primary_metric(self) -> str:
        return f"mAP@{self.k}"

    def _rows(self, protocol: str) -> np.ndarray:
        return np.flatnonzero(np.asarray(self.usage) == protocol)

    def score(self, ranks: np.ndarray) -> dict[str, dict[str, float]]:
        """Return ``{protocol: {"mAP@100": ..}}`` for each usage present (fractions in [0, 1])."""
        return self.score_with_per_query(ranks)[0]

    def score_with_per_query(self, ranks: np.ndarray) -> tuple[dict[str, dict[str, float]], np.ndarray]:
        """:meth:`score` and :meth:`per_query` of ``ranks`` (``int64[n_queries, k]``) from one pass:
        ``(scores, float64[n_queries])``."""
        ranks = _check_ranks(self.name, ranks, len(self.query_paths), len(self.gallery_paths))
        out = {}
        per_query = np.full(len(self.query_paths), np.nan)
        for protocol in self.protocols:
            rows = self._rows(protocol)
            aps, value = metrics._gldv2_ap_and_map(
                ranks[rows], [set(self.solution[i]) for i in rows], k=self.k
            )  # = (gldv2_ap_at_k, gldv2_map_at_k)
            out[protocol] = {f"mAP@{self.k}": float(value)}
            if protocol == self.primary_protocol:
                per_query[rows] = aps
        return out, per_query

    def per_query(self, ranks: np.ndarray) -> np.ndarray:
        """``float64[n_queries]``: per-query AP@k of ``ranks`` (``int64[n_queries, k]``) for the queries of
        the primary usage, NaN for the other usage's queries. Its NaN-mean is the primary mAP@k."""
        ranks = _check_ranks(self.name, ranks, len(self.query_paths), len(self.gallery_paths))
        rows = self._rows(self.primary_protocol)
        out = np.full(len(self.query_paths), np.nan)
        out[rows] = metrics.gldv2_ap_at_k(ranks[rows], [set(self.solution[i]) for i in rows], k=self.k)
        return out

    def query_groups(self) -> np.ndarray:
        """``int64[n_queries]``: landmark group id per query, from the solution only: queries sharing a
        relevant gallery item, directly or through a chain, share a group. Ids are ``0 .. G-1`` in order of
        first query (all queries, both usages)."""
        return _groups_from_positives([_as_index(sol) for sol in self.solution])

    def top1_correct(self, ranks: np.ndarray) -> dict[str, np.ndarray]:
        """Per usage, ``float[n_queries_of_usage]``: 1.0/0.0 whether the top-1 result is relevant."""
        ranks = _check_ranks(self.name, ranks, len(self.query_paths), len(self.gallery_paths))
        out = {}
        for protocol in self.protocols:
            rows = self._rows(protocol)
            out[protocol] = np.array(
                [float(int(ranks[i, 0]) in set(self.solution[i])) for i in rows], dtype=np.float64
            )
        return out


EvalSet = RevisitedEvalSet | GLDv2EvalSet


def eval_set_sizes(eval_set: EvalSet) -> tuple[int, int]:
    """(n_queries, n_gallery)."""
    return len(eval_set.query_paths), len(eval_set.gallery_paths)


def as_paths(items: Sequence[str | Path]) -> tuple[Path, ...]:
    return tuple(Path(p) for p in items)
