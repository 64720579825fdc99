"""The sequential-upgrade leaderboard: AC/AA per method over seeds and its Markdown rendering."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from bctbench.comparability import Entry
from bctbench.errors import ConfigError
from bctbench.leaderboard.formats import _fmt_cell, to_csv
from bctbench.leaderboard.table import _EMPTY, LEVEL, _as_entries, _interval_fields
from bctbench.results import RunResult
from bctbench.statistics import (
    Interval,
    combined_interval,
)

# ---------------------------------------------------------------------- sequential view
SEQ_CURVE = "sequential"


SEQ_SUMMARY = ("AC", "AA")


def is_sequential(results: Iterable[RunResult]) -> bool:
    """True when the results come from a sequential benchmark (they carry ``curves["sequential"]``)."""
    return any(SEQ_CURVE in (res.curves or {}) for res in results)


def sequential_leaderboard(results: Iterable[RunResult | Entry]) -> pd.DataFrame:
    """One row per method of a sequential benchmark, from its RunResults alone.

    For each eval set at its primary (protocol, metric): every matrix entry ``C[i][j] = M(g_i -> g_j)``,
    ``i >= j`` (column ``<es> <protocol> <metric> g{i}→g{j}``), then ``<es> AC`` and ``<es> AA``
    (AC: share of pairs i > j with gi→gj above gj→gj; AA: mean of all entries), each with ``lo`` / ``hi`` (95 %
    t interval over seeds) and ``n`` companions: AC and AA are computed per seed from that seed's matrix
    (:func:`~bctbench.evaluation.sequential.compatibility_matrices`), then averaged over seeds. One row per
    run label and origin (the user's rows marked ``(yours)``).
    Rows are sorted by the first eval set's AA (descending, missing last), ties by name. Columns ``method``,
    ``flags``, ``seeds``, ``steps``. Raises :class:`~bctbench.errors.ConfigError` when results mix benchmarks
    or numbers of generations.
    """
    from bctbench.evaluation.sequential import compatibility_matrices

    entries = _as_entries(results)
    results = [e.result for e in entries]
    benchmarks = sorted({r.benchmark for r in results})
    if len(benchmarks) > 1:
        raise ConfigError(f"leaderboard needs results of one benchmark, got {', '.join(benchmarks)}")
    steps_seen = sorted({int(r.curves.get(SEQ_CURVE, {}).get("steps", 0)) for r in results})
    if len(steps_seen) != 1 or steps_seen[0] < 2:
        raise ConfigError(f"sequential leaderboard needs one number of generations >= 2, got {steps_seen}")
    steps = steps_seen[0]
    eval_sets: list[tuple[str, str, str]] = []
    for res in results:
        for row in res.metrics:
            es = row["eval_set"]
            if es not in {e for e, _, _ in eval_sets}:
                pm = res.primary_of(es)
                if pm is not None:
                    eval_sets.append((es, pm[0], pm[1]))
    pairs = [(i, j) for i in range(steps) for j in range(i + 1)]
    per_method: dict[str, list[RunResult]] = {}
    for e in entries:
        per_method.setdefault(e.row, []).append(e.result)

    rows: list[dict[str, Any]] = []
    for m in sorted(per_method):
        runs = sorted(per_method[m], key=lambda r: r.seed)
        flags = sorted({f for r in runs for f in r.flags})
        row: dict[str, Any] = {
            "method": m,
            "flags": ",".join(flags),
            "seeds": len({r.seed for r in runs}),
            "steps": steps,
        }
        for es, p, met in eval_sets:
            per_seed: dict[int, list[dict[str, Any]]] = {}
            for r in runs:
                mats = compatibility_matrices(r.metrics, steps)
                hit = [x for x in mats if (x["eval_set"], x["protocol"], x["metric"]) == (es, p, met)]
                if hit:
                    per_seed.setdefault(r.seed, []).append(hit[0])
            for i, j in pairs:
                vals = [float(np.mean([x["matrix"][i][j] for x in xs])) for xs in per_seed.values()]
                row.update(_interval_fields(f"{es} {p} {met} g{i}→g{j}", _seed_interval(vals)))
            for key in SEQ_SUMMARY:
                vals = [float(np.mean([x[key] for x in xs])) for xs in per_seed.values()]
                row.update(_interval_fields(f"{es} {key}", _seed_interval(vals)))
        rows.append(row)

    first = f"{eval_sets[0][0]} AA" if eval_sets else None

    def sort_key(r: dict[str, Any]) -> tuple:
        v = r.get(first, math.nan) if first else math.nan
        return (0 if math.isfinite(v) else 1, -v if math.isfinite(v) else 0.0, r["method"])

    rows.sort(key=sort_key)
    lb = pd.DataFrame(rows)
    lb.attrs["eval_sets"] = eval_sets
    lb.attrs["steps"] = steps
    return lb


def _seed_interval(values: Sequence[float]) -> Interval:
    vals = [v for v in values if math.isfinite(v)]
    return combined_interval(vals, level=LEVEL) if vals else _EMPTY


def sequential_to_markdown(lb: pd.DataFrame) -> str:
    """Markdown of :func:`sequential_leaderboard`: one table per eval set (matrix entries, AC, AA), then a
    legend. Deterministic (golden-tested)."""
    steps = int(lb.attrs.get("steps", lb["steps"].iloc[0] if len(lb) else 0))
    eval_sets = lb.attrs.get("eval_sets") or []
    pairs = [(i, j) for i in range(steps) for j in range(i + 1)]
    lines: list[str] = []
    for es, p, met in eval_sets:
        cols = [(f"g{i}→g{j}", f"{es} {p} {met} g{i}→g{j}") for i, j in pairs]
        cols += [(key, f"{es} {key}") for key in SEQ_SUMMARY]
        lines.append(f"**{es}** ({p}, {met})")
        lines.append("")
        lines.append("| method | " + " | ".join(h for h, _ in cols) + " | flags |")
        lines.append("|---|" + "---:|" * len(cols) + "---|")
        for _, r in lb.iterrows():
            cells = [_fmt_cell(r[c], r[f"{c} lo"], r[f"{c} hi"], r[f"{c} n"], 100.0) for _, c in cols]
            lines.append("| " + " | ".join([str(r["method"]), *cells, str(r["flags"] or "")]) + " |")
        lines.append("")
    lines += [
        f"Sequential upgrade over {steps} generations: g0 is the seed's pinned old model (shared by every "
        "method), each later generation is trained by the row's method with its predecessor frozen as the old "
        "model.",
        "Cells: mean ± half-width of the 95 % CI over seeds (t interval; n seeds), ×100. gi→gj: query embedded by generation i, gallery by generation j "
        "(gi→gi: self-test). AC: share of pairs i > j with gi→gj > gj→gj; AA: mean of all entries i ≥ j "
        "(docs/evaluation.md §5.3), per seed, then over seeds.",
    ]
    return "\n".join(lines) + "\n"


_SEQ_RENDERERS: Mapping[str, Callable[[pd.DataFrame], str]] = {
    "md": sequential_to_markdown,
    "markdown": sequential_to_markdown,
    "csv": to_csv,
}
