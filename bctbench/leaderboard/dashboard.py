"""What the W&B dashboards show of a leaderboard: one flat row per method (means and 95 % CI bounds), and the
P-metrics and verdicts of one run.

Plain pandas/NumPy on the table of :mod:`bctbench.leaderboard.table`; the W&B calls are in
:mod:`bctbench.tracking`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from bctbench.comparability import REFERENCE, YOURS, Entry
from bctbench.leaderboard.formats import _scale, _value_columns
from bctbench.leaderboard.table import P_COLUMNS, leaderboard


def board_table(lb: pd.DataFrame) -> pd.DataFrame:
    """One row per leaderboard row: ``method`` (as displayed), ``origin``, ``role``, ``seeds``, then for every
    value column ``c`` (mAP and AUC ×100, P-metrics as they are): ``c`` (mean), ``c lo``, ``c hi`` (95 % CI)
    and ``c n``; the verdict columns (``<eval set> cross>old`` …), ``tier`` and ``best``."""
    out = lb[["method", "origin", "role", "seeds"]].copy()
    for col in _value_columns(lb):
        k = _scale(col)
        out[col] = lb[col] * k
        out[f"{col} lo"] = lb[f"{col} lo"] * k
        out[f"{col} hi"] = lb[f"{col} hi"] * k
        out[f"{col} n"] = lb[f"{col} n"]
    for col in lb.columns:
        if col.endswith(">old"):
            out[col] = lb[col]
    for col in ("tier", "best"):
        if col in lb.columns:
            out[col] = lb[col]
    return out.reset_index(drop=True)


def run_summary(entries: Sequence[Entry], label: str, seed: int, origin: str = YOURS) -> dict[str, Any]:
    """P-metrics and compatibility verdicts of run (``label``, ``seed``, ``origin``) among comparable
    ``entries`` (those :func:`bctbench.comparability.gate` admitted).

    ``seed/P_up``, ``seed/P_comp``, ``seed/P_1``: this seed alone, against the same seed's old→old and φ*
    (NaN when no φ* run of that seed is present). ``all/...``: the row of the whole board for this label
    (every seed present): P-metric means and CI bounds, each ``<eval set> cross>old`` / ``self>old``
    verdict (✓/≈/✗; ≈ with one seed, as on the leaderboard), ``tier`` and ``seeds``."""
    out: dict[str, Any] = {}
    mine = [e for e in entries if e.result.label == label and e.origin == origin]
    if not mine:
        return out
    one = [e for e in entries if e.result.seed == seed]
    row = _row(leaderboard(one), label, origin)
    for col in P_COLUMNS:
        out[f"seed/{col}"] = _num(row.get(col)) if row is not None else math.nan
    row = _row(leaderboard(entries), label, origin)
    if row is None:
        return out
    out["all/seeds"] = int(row["seeds"])
    for col in P_COLUMNS:
        for suffix in ("", " lo", " hi"):
            out[f"all/{col}{suffix.replace(' ', '_')}"] = _num(row.get(f"{col}{suffix}"))
    for col, value in row.items():
        if isinstance(col, str) and col.endswith(">old"):
            out[f"all/{col}"] = value if isinstance(value, str) else None
    out["all/tier"] = _num(row.get("tier"))
    return out


def _row(lb: pd.DataFrame, label: str, origin: str) -> dict[str, Any] | None:
    key = label if origin == REFERENCE else f"{label} (yours)"  # as Entry.row names it
    hit = lb[(lb["key"] == key) & (lb["origin"] == origin)]
    return None if hit.empty else hit.iloc[0].to_dict()


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan
