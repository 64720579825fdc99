"""Eval sets: what to embed (query and gallery image paths) and how to score a ranking.

Each eval set owns its metric, so the evaluator stays generic. Loaders in ``datamodules/`` build these from
the on-disk formats (revisited ``gnd_*.pkl`` + ``jpg/``; GLDv2 ``index.csv``/``test.csv``/solution CSV).

Orientation: every ``ranks`` argument is ``int64[n_queries, k]``, rows are queries, best first, values are
gallery row indices.
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


def _check_ranks(name: str, ranks: np.ndarray, n_queries: int, n_gallery: int) -> np.ndarray:
    ranks = np.asarray(ranks)
    if ranks.ndim != 2 or ranks.shape[0] != n_queries:
        raise EvaluationError(
            f"{name}: ranks must be int64[n_queries={n_queries}, k], got shape {tuple(ranks.shape)}"
        )
    if ranks.size and (ranks.min() < 0 or ranks.max() >= n_gallery):
        raise EvaluationError(f"{name}: ranks hold gallery indices outside [0, {n_gallery})")
    return ranks.astype(np.int64, copy=False)


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
        ranks = _check_ranks(self.name, ranks, len(self.query_paths), len(self.gallery_paths))
        out: dict[str, dict[str, float]] = {}
        for protocol in self.protocols:
            gnd_p = metrics.revisited_gnd(list(self.gnd), protocol)
            m_ap, _, mp_at_k, _ = metrics.revisited_map(ranks, gnd_p, kappas=(1, 5, 10))
            out[protocol] = {"mAP": float(m_ap)} | {
                f"mP@{k}": float(v) for k, v in zip((1, 5, 10), mp_at_k, strict=True)
            }
        return out

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
        ranks = _check_ranks(self.name, ranks, len(self.query_paths), len(self.gallery_paths))
        out = {}
        for protocol in self.protocols:
            rows = self._rows(protocol)
            value = metrics.gldv2_map_at_k(ranks[rows], [set(self.solution[i]) for i in rows], k=self.k)
            out[protocol] = {f"mAP@{self.k}": float(value)}
        return out

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
