"""Sequential multi-step upgrades: generation names, evaluation pairs and compatibility matrices.

A sequential benchmark (``docs/data_formats.md`` §4.5) trains generations ``g0 -> g1 -> ... -> g{T-1}``:
``g0`` is the seed's pinned old model (shared by every method), every later generation is trained by the
method with its immediate predecessor as the frozen old model. Evaluation ranks every pair ``g{i} -> g{j}``
with ``i >= j`` (query embedded by ``g{i}``, gallery by ``g{j}``; the diagonal holds the self-tests), stored as
ordinary tidy metric rows with
``query_model = "g{i}"`` and ``gallery_model = "g{j}"``. :func:`compatibility_matrices` turns those rows back
into ``C[i][j]`` and the summary metrics AC / AA of ``docs/evaluation.md`` §5.3
(:func:`~bctbench.evaluation.metrics.multi_step_metrics`).

Pure NumPy: no torch, no I/O.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from bctbench.errors import EvaluationError
from bctbench.evaluation.metrics import multi_step_metrics

_GEN = re.compile(r"^g(\d+)$")


def generation_name(i: int) -> str:
    """Model name of generation ``i`` in metric rows: ``"g{i}"``."""
    return f"g{int(i)}"


def generation_index(name: str) -> int | None:
    """Inverse of :func:`generation_name` (None for names such as ``"old"`` / ``"new"``)."""
    m = _GEN.match(str(name))
    return int(m.group(1)) if m else None


def sequential_pairs(steps: int) -> list[str]:
    """Evaluation pairs ``"g{i}-g{j}"`` for ``steps > i >= j >= 0``, row by row (``g0-g0, g1-g0, g1-g1, ...``)."""
    if steps < 1:
        raise EvaluationError(f"need at least one generation, got {steps}")
    return [f"{generation_name(i)}-{generation_name(j)}" for i in range(steps) for j in range(i + 1)]


def compatibility_matrices(rows: Iterable[Mapping[str, Any]], steps: int) -> list[dict[str, Any]]:
    """Per (eval set, protocol, metric) the matrix ``C[i][j] = M(g_i -> g_j)`` and its AC / AA.

    ``rows``: tidy metric rows (other model names are ignored). Returns dicts ``{"eval_set", "protocol",
    "metric", "matrix", "AC", "AA"}`` in order of first appearance; ``matrix`` is a ``steps x steps`` list of
    lists with NaN above the diagonal and for missing entries. AC / AA are NaN when a lower-triangular entry is
    missing (a partial matrix is never summarised).
    """
    mats: dict[tuple[str, str, str], np.ndarray] = {}
    for r in rows:
        i, j = generation_index(r["query_model"]), generation_index(r["gallery_model"])
        if i is None or j is None or not (steps > i >= j >= 0):
            continue
        key = (r["eval_set"], r["protocol"], r["metric"])
        if key not in mats:
            mats[key] = np.full((steps, steps), np.nan)
        v = r["value"]
        mats[key][i, j] = math.nan if v is None else float(v)
    out = []
    li, lj = np.tril_indices(steps)
    for (es, protocol, metric), m in mats.items():
        if np.isnan(m[li, lj]).any():
            summary = {"AC": math.nan, "AA": math.nan}
        else:
            summary = multi_step_metrics(m)
        out.append(
            {
                "eval_set": es,
                "protocol": protocol,
                "metric": metric,
                "matrix": m.tolist(),
                "AC": float(summary["AC"]),
                "AA": float(summary["AA"]),
            }
        )
    return out
