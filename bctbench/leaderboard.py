"""Leaderboard: a pure function of result files, gated for comparability and stated with honest uncertainty.

Pipeline: read the reference results (``results/reference``) and the user's results root →
:func:`bctbench.comparability.gate` (admit only results that agree on spec, data, split, per-seed old model and
hyperparameters; list the others apart) → :func:`leaderboard` (one row per run label and origin, 95 % CIs,
paired ✓/≈/✗ verdicts, tiers) → :func:`to_markdown` / :func:`to_csv` / :func:`to_latex`, and
:func:`plot_leaderboard`.

Columns, for each eval set at its *primary* (protocol, metric) taken from the results' ``primary`` field (no
dataset names are hard-coded): ``cross`` = new→old (query by the row's model, gallery by the old model of the
same seed) and ``self`` = new→new; the ``old→old`` row shows old model k's self-test over seeds k in both. Then
the compatibility verdicts, AdvBCT's P_up, P_comp and P_1 (``docs/evaluation.md`` §5.2), the backfilling AUC
of the first eval set's primary metric per backfilling mode present, the row's backfilling summary and flags.

Numbers in the DataFrame are raw (mAP and AUC as fractions, P-metrics in 0–100); renderers show mAP and AUC
×100 with two decimals as ``mean ± CI half-width (n)``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bctbench.comparability import REFERENCE as ORIGIN_REF
from bctbench.comparability import Entry, gate
from bctbench.errors import BCTBenchError, ConfigError
from bctbench.evaluation.metrics import backfill_auc, p_scores
from bctbench.results import ROW_KEYS, RunResult, read_results
from bctbench.statistics import (
    Comparison,
    Interval,
    bootstrap_metric,
    combined_interval,
    landmark_bootstrap_weights,
    min_detectable_difference,
    paired_comparison,
    significantly_best,
    tiers,
)

REFERENCE = "old→old"
PARAGON = "independent"
CROSS = ("new", "old")
SELF = ("new", "new")
OLD = ("old", "old")
P_COLUMNS = ("P_up", "P_comp", "P_1")
AUC_MODE, AUC_ORDER = "mixed", "random"
AUC_MODES = ("mixed", "merge")

FRAME_COLUMNS = (
    "kind",
    "benchmark",
    "method",
    "seed",
    "flags",
    *ROW_KEYS,
    "primary_protocol",
    "primary_metric",
    "mode",
    "order",
    "order_seed",
    "fraction",
    "backfill_mode",
)

__all__ = [
    "FRAME_COLUMNS",
    "load_results",
    "leaderboard",
    "plot_leaderboard",
    "is_sequential",
    "legend",
    "render",
    "results_frame",
    "sequential_leaderboard",
    "sequential_to_markdown",
    "to_csv",
    "to_latex",
    "to_markdown",
]


# ---------------------------------------------------------------------- loading
def _primary_for(res: RunResult, eval_set: str) -> tuple[str | None, str | None]:
    pm = res.primary_of(eval_set)
    if pm is not None:
        return pm
    for row in res.metrics:  # fallback: the first (protocol, metric) of this eval set's old→old rows
        if row["eval_set"] == eval_set and (row["query_model"], row["gallery_model"]) == OLD:
            return row["protocol"], row["metric"]
    return None, None


def results_frame(results: Iterable[RunResult], keys: Sequence[str] | None = None) -> pd.DataFrame:
    """Flatten RunResults into one tidy frame with a ``kind`` column (columns: :data:`FRAME_COLUMNS`).

    * ``kind="metric"``: one row per metric row (``value`` is a fraction);
    * ``kind="backfill"``: one row per backfilling-curve point (``fraction``, ``value``; ``mode``, ``order``,
      ``order_seed``; ``query_model``/``gallery_model`` empty);
    * ``kind="backfill_auc"``: one row per curve with its AUC (stored ``auc``, else the trapezoid AUC).

    Every row carries ``benchmark, method`` (the row key: ``keys[i]`` or the run label), ``seed, flags`` (sorted, comma-joined), ``backfill_mode`` (the run's
    headline backfilling mode, ``curves["backfill_mode"]``, default ``mixed``) and its eval set's primary
    ``primary_protocol`` / ``primary_metric``. Row order follows the results and their metric order, which fixes
    the eval-set order of the leaderboard.
    """
    rows: list[dict[str, Any]] = []
    results = list(results)
    keys = list(keys) if keys is not None else [r.label for r in results]
    for res, key in zip(results, keys, strict=True):
        base = {"benchmark": res.benchmark, "method": key, "seed": int(res.seed)}
        base["flags"] = ",".join(sorted(set(res.flags)))
        base["backfill_mode"] = str(res.curves.get("backfill_mode") or AUC_MODE)  # the method's headline mode
        primaries: dict[str, tuple[str | None, str | None]] = {}

        def prim(es: str, res: RunResult = res, primaries: dict = primaries) -> dict[str, Any]:
            if es not in primaries:
                primaries[es] = _primary_for(res, es)
            return {"primary_protocol": primaries[es][0], "primary_metric": primaries[es][1]}

        for row in res.metrics:
            rows.append({"kind": "metric", **base, **{k: row[k] for k in ROW_KEYS}, **prim(row["eval_set"])})
        for curve in res.curves.get("backfill", []) or []:
            common = {
                **base,
                "eval_set": curve["eval_set"],
                "protocol": curve["protocol"],
                "metric": curve["metric"],
                "mode": curve["mode"],
                "order": curve["order"],
                "order_seed": curve.get("order_seed"),
                **prim(curve["eval_set"]),
            }
            fractions = [float(f) for f in curve["fractions"]]
            values = [math.nan if v is None else float(v) for v in curve["values"]]
            for f, v in zip(fractions, values, strict=True):
                rows.append({"kind": "backfill", **common, "fraction": f, "value": v})
            auc = curve.get("auc")
            if auc is None:
                try:
                    auc = backfill_auc(fractions, values)
                except BCTBenchError:
                    auc = math.nan
            rows.append({"kind": "backfill_auc", **common, "value": float(auc)})
    df = pd.DataFrame(rows, columns=list(FRAME_COLUMNS))
    return df.astype({"seed": "int64", "value": "float64", "fraction": "float64"})


def load_results(results_root: str | os.PathLike, benchmark: str) -> pd.DataFrame:  # frame for plots
    """Read ``results_root/<benchmark>/*/seed*.json`` (bad files skipped with a warning) -> :func:`results_frame`."""
    return results_frame(read_results(results_root, benchmark))


def _eval_sets(df: pd.DataFrame) -> list[tuple[str, str, str]]:
    """``[(eval_set, protocol, metric)]`` of a :func:`results_frame`, in order of first appearance."""
    out: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    m = df[df["kind"] == "metric"]
    for es, p, met in zip(m["eval_set"], m["primary_protocol"], m["primary_metric"], strict=True):
        if es in seen or not isinstance(p, str) or not isinstance(met, str):
            continue
        seen.add(es)
        out.append((es, p, met))
    return out


# ---------------------------------------------------------------------- aggregation
N_BOOT, BOOT_SEED, LEVEL = 1000, 0, 0.95
STAT_SUFFIXES = ("lo", "hi", "n", "seed_sd", "test_se")


def _primary_sets(results: Sequence[RunResult]) -> list[tuple[str, str, str]]:
    """``[(eval_set, protocol, metric)]`` in order of first appearance, each at its primary pair."""
    out: list[tuple[str, str, str]] = []
    for res in results:
        for row in res.metrics:
            es = row["eval_set"]
            if es not in {e for e, _, _ in out}:
                p, met = _primary_for(res, es)
                if p is not None and met is not None:
                    out.append((es, p, met))
    return out


def value_column(eval_set: str, protocol: str, metric: str, pair: tuple[str, str]) -> str:
    """Leaderboard column name of one (eval set, protocol, metric, query→gallery) cell."""
    return f"{eval_set} {protocol} {metric} {pair[0]}→{pair[1]}"


def _stat_cols(name: str) -> list[str]:
    return [name, *(f"{name} {s}" for s in STAT_SUFFIXES)]


def _interval_fields(name: str, iv: Interval) -> dict[str, Any]:
    return dict(zip(_stat_cols(name), (iv.mean, iv.low, iv.high, iv.n, iv.seed_sd, iv.test_se), strict=True))


_EMPTY = Interval(math.nan, math.nan, math.nan, 0, math.nan, math.nan, math.nan, math.nan)


class _Sample:
    """Per-seed values of one quantity and, when every seed has them, bootstrap replicates ``float[B]``."""

    def __init__(self) -> None:
        self.value: dict[int, float] = {}
        self.boot: dict[int, np.ndarray | None] = {}

    def add(self, seed: int, value: float, boot: np.ndarray | None) -> None:
        if value is not None and math.isfinite(value):
            self.value[seed] = float(value)
            self.boot[seed] = boot

    def arrays(self, seeds: Sequence[int]) -> tuple[np.ndarray, np.ndarray | None]:
        vals = np.array([self.value[s] for s in seeds], dtype=np.float64)
        boots = [self.boot[s] for s in seeds]
        if not seeds or any(b is None for b in boots):
            return vals, None
        return vals, np.stack(boots)

    def interval(self) -> Interval:
        seeds = sorted(self.value)
        return combined_interval(*self.arrays(seeds), level=LEVEL) if seeds else _EMPTY


def _paired(a: _Sample, b: _Sample) -> Comparison | None:
    seeds = sorted(set(a.value) & set(b.value))
    if not seeds:
        return None
    if len(seeds) < 2:  # one seed: training randomness unknown, no verdict either way
        d = a.value[seeds[0]] - b.value[seeds[0]]
        return Comparison(d, math.nan, math.nan, math.nan, 1, "≈")
    va, ba = a.arrays(seeds)
    vb, bb = b.arrays(seeds)
    if ba is None or bb is None:
        ba = bb = None
    return paired_comparison(va, vb, ba, bb, level=LEVEL)


class _Bootstrap:
    """Landmark-bootstrap replicates of per-query scores, one shared weight matrix per eval set."""

    def __init__(self, results: Sequence[RunResult], n_boot: int, seed: int) -> None:
        self.weights: dict[str, np.ndarray] = {}
        for res in results:
            for es, pq in (res.per_query or {}).items():
                if es not in self.weights and isinstance(pq, Mapping) and pq.get("groups"):
                    groups = np.asarray(pq["groups"], dtype=np.int64)
                    self.weights[es] = landmark_bootstrap_weights(groups, n_boot, seed)

    def __call__(self, res: RunResult, es: str, protocol: str, metric: str, pair: tuple[str, str]):
        """``float[B]`` replicates of the pair's metric, or None when the result lacks per-query scores."""
        pq = (res.per_query or {}).get(es)
        w = self.weights.get(es)
        if (
            not isinstance(pq, Mapping)
            or w is None
            or (pq.get("protocol"), pq.get("metric")) != (protocol, metric)
        ):
            return None
        scores = (pq.get("scores") or {}).get(f"{pair[0]}|{pair[1]}")
        if scores is None or len(scores) != w.shape[1]:
            return None
        ap = np.array([math.nan if v is None else float(v) for v in scores], dtype=np.float64)
        return bootstrap_metric(ap, w)


def _as_entries(items: Iterable[RunResult | Entry]) -> list[Entry]:
    return [x if isinstance(x, Entry) else Entry(x) for x in items]


def leaderboard(
    items: Iterable[RunResult | Entry],
    *,
    n_boot: int = N_BOOT,
    boot_seed: int = BOOT_SEED,
    apart: Sequence[str] = (),
    code_versions: Sequence[str] = (),
) -> pd.DataFrame:
    """One row per (origin, run label) from admitted results (:func:`bctbench.comparability.gate`).

    Rows: ``old→old`` (per seed k: old model k's self-test), the paragon ``independent`` (φ*) and every other
    run label, the user's rows (``origin == "yours"``) beside the reference row of the same label. For each
    eval set at its primary (protocol, metric): ``cross`` = new→old and ``self`` = new→new cells, each the
    mean over seeds with a 95 % CI (:func:`bctbench.statistics.combined_interval`: seed-to-seed t part and a
    landmark bootstrap of the test-set error, ``n_boot`` rounds shared by every run); companions ``lo``,
    ``hi``, ``n``, ``seed_sd`` and ``test_se``. ``<es> cross>old`` / ``<es> self>old``: ✓ / ≈ / ✗ from a paired
    test against the same seed's old→old. ``P_up``, ``P_comp``, ``P_1`` per seed against that seed's
    old→old and φ* (bootstrapped the same way). ``tier``: groups by paired tests on P_1 with Holm correction
    (1 = not significantly below the best); ``best``: True only for a significantly best row. Backfilling AUC
    columns (mean with a seeds-only t interval). ``attrs``: ``eval_sets``, ``apart``, ``code_versions``,
    ``mdd`` (minimal detectable P_1 difference), ``n_boot``.
    """
    entries = _as_entries(items)
    results = [e.result for e in entries]
    benchmarks = sorted({r.benchmark for r in results})
    if len(benchmarks) > 1:
        raise ConfigError(f"leaderboard needs results of one benchmark, got {', '.join(benchmarks)}")
    eval_sets = _primary_sets(results)
    boot = _Bootstrap(results, n_boot, boot_seed)
    groups: dict[str, list[Entry]] = {}
    for e in sorted(entries, key=lambda e: (e.origin != ORIGIN_REF, e.result.label, e.result.seed)):
        groups.setdefault(e.row, []).append(e)

    # old model k's self-test: the same for every run of seed k (reference runs first)
    old: dict[str, _Sample] = {es: _Sample() for es, _, _ in eval_sets}
    for es, p, met in eval_sets:
        for e in sorted(entries, key=lambda e: e.origin != ORIGIN_REF):
            r = e.result
            if r.seed not in old[es].value:
                old[es].add(r.seed, r.value(es, p, OLD[0], OLD[1], met), boot(r, es, p, met, OLD))

    samples: dict[str, dict[tuple[str, tuple[str, str]], _Sample]] = {}
    for row, members in groups.items():
        samples[row] = {}
        for es, p, met in eval_sets:
            for pair in (CROSS, SELF):
                s = samples[row][(es, pair)] = _Sample()
                for e in members:
                    s.add(
                        e.result.seed,
                        e.result.value(es, p, pair[0], pair[1], met),
                        boot(e.result, es, p, met, pair),
                    )

    paragon_row = next((r for r in (PARAGON, f"{PARAGON} (yours)") if r in groups), None)
    usable = [es for es, _, _ in eval_sets if old[es].value]

    def p_samples(row: str) -> dict[str, _Sample]:
        """P-metrics per seed (and per bootstrap round) against the seed's old→old and φ*."""
        out = {c: _Sample() for c in P_COLUMNS}
        if paragon_row is None or not usable:
            return out
        mine, par = samples[row], samples[paragon_row]
        for seed in sorted({e.result.seed for e in groups[row]}):
            needed = [
                sample
                for es in usable
                for sample in (mine[(es, SELF)], mine[(es, CROSS)], old[es], par[(es, SELF)])
            ]
            if all(seed in sample.value for sample in needed):
                parts = [(sample.value[seed], sample.boot[seed]) for sample in needed]
                with_boot = all(b is not None for _, b in parts)
                cols = [np.concatenate([[v], b]) if with_boot else np.array([v]) for v, b in parts]
                arr = np.stack(cols).reshape(len(usable), 4, -1)  # [E, (self, cross, old, φ*), 1 + B]
                sc = p_scores(
                    None if row == paragon_row else arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3], beta=1.0
                )
                for col, key in zip(P_COLUMNS, ("P_up", "P_comp", "P_beta"), strict=True):
                    out[col].add(seed, float(sc[key][0]), sc[key][1:] if with_boot else None)
        return out

    auc_spec = eval_sets[0] if eval_sets else None
    rows: list[dict[str, Any]] = []
    ref: dict[str, Any] = {"method": REFERENCE, "key": REFERENCE, "name": REFERENCE, "origin": ORIGIN_REF}
    ref.update(
        {
            "role": "reference",
            "flags": "",
            "seeds": len(set().union(*(o.value for o in old.values()))) if old else 0,
        }
    )
    for es, p, met in eval_sets:
        iv = old[es].interval()
        for pair in (CROSS, SELF):
            ref.update(_interval_fields(value_column(es, p, met, pair), iv))
        ref[f"{es} cross>old"] = ref[f"{es} self>old"] = None
    for col in P_COLUMNS:
        ref.update(_interval_fields(col, _EMPTY))
    rows.append(ref)

    p_all = {row: p_samples(row) for row in groups}
    for row, members in groups.items():
        first = members[0].result
        role = "paragon" if row == paragon_row or first.label == PARAGON else "method"
        flags = sorted({f for e in members for f in e.result.flags})
        r: dict[str, Any] = {
            "method": _display(first.label, role, members[0].origin),
            "key": row,
            "name": first.method,
            "origin": members[0].origin,
            "role": role,
            "flags": ",".join(flags),
            "seeds": len({e.result.seed for e in members}),
        }
        for es, p, met in eval_sets:
            for pair, verdict in ((CROSS, "cross>old"), (SELF, "self>old")):
                sample = samples[row][(es, pair)]
                r.update(_interval_fields(value_column(es, p, met, pair), sample.interval()))
                cmp = _paired(sample, old[es])
                r[f"{es} {verdict}"] = cmp.verdict if cmp is not None else None
        for col in P_COLUMNS:
            r.update(_interval_fields(col, p_all[row][col].interval()))
        if auc_spec is not None:
            for mode, values in _auc_per_seed(members, auc_spec).items():
                r.update(
                    _interval_fields(_auc_column(auc_spec, mode), combined_interval(values, level=LEVEL))
                )
            r["backfill"] = _monotone_summary(members, auc_spec)
        rows.append(r)

    # tiers on P_1 among rows that have it
    ranked = [r for r in rows[1:] if math.isfinite(r.get("P_1", math.nan))]
    names = [r["key"] for r in ranked]
    scores = np.array([r["P_1"] for r in ranked], dtype=np.float64)
    pvals: dict[tuple[int, int], float] = {}

    def compare(i: int, j: int) -> float:
        if (i, j) not in pvals:
            cmp = _paired(p_all[names[i]]["P_1"], p_all[names[j]]["P_1"])
            pvals[(i, j)] = pvals[(j, i)] = cmp.p if cmp is not None else math.nan
        return pvals[(i, j)]

    tier_of = tiers(names, scores, compare) if names else {}
    best = significantly_best(names, scores, compare) if len(names) > 1 else None
    for r in rows:
        r["tier"] = tier_of.get(r["key"])
        r["best"] = r["key"] == best
    mdd = _mdd(names, scores, p_all)

    def sort_key(r: dict[str, Any]) -> tuple:
        rank = {"reference": 0, "paragon": 1}.get(r["role"], 2)
        anchor = next((x for x in rows if x["key"] == r["key"].removesuffix(" (yours)")), r)
        tier = anchor.get("tier") or 10**6
        p1 = anchor.get("P_1", math.nan)
        p1 = -p1 if isinstance(p1, float) and math.isfinite(p1) else math.inf
        return (rank, tier, p1, anchor["key"], r["origin"] != ORIGIN_REF)

    rows.sort(key=sort_key)
    lb = pd.DataFrame(rows)
    lb.index = pd.RangeIndex(len(lb))
    lb.attrs.update(
        {
            "eval_sets": eval_sets,
            "apart": list(apart),
            "code_versions": list(code_versions),
            "mdd": mdd,
            "n_boot": n_boot if boot.weights else 0,
        }
    )
    return lb


def _display(label: str, role: str, origin: str) -> str:
    text = f"{label} (φ*)" if role == "paragon" else label
    return text if origin == ORIGIN_REF else f"{text} (yours)"


def _mdd(names: list[str], scores: np.ndarray, p_all: dict[str, dict[str, _Sample]]) -> dict[str, float]:
    """Minimal detectable P_1 difference (paired t, α 0.05, power 0.8, seed part): from the median sd of the
    per-seed differences between the best row and each other row."""
    if len(names) < 2:
        return {}
    top = names[int(np.nanargmax(scores))]
    sds, ns = [], []
    for other in names:
        if other == top:
            continue
        a, b = p_all[top]["P_1"].value, p_all[other]["P_1"].value
        seeds = sorted(set(a) & set(b))
        if len(seeds) >= 2:
            sds.append(float(np.std([a[s] - b[s] for s in seeds], ddof=1)))
            ns.append(len(seeds))
    if not sds:
        return {}
    sd, n = float(np.median(sds)), int(np.median(ns))
    return {"sd": sd, "n": n, "mdd": min_detectable_difference(sd, n)}


def _auc_column(spec: tuple[str, str, str], mode: str) -> str:
    return f"AUC {spec[0]} {spec[1]} {spec[2]} {mode}/{AUC_ORDER}"


def _auc_per_seed(members: Sequence[Entry], spec: tuple[str, str, str]) -> dict[str, list[float]]:
    """Per backfilling mode, each seed's AUC of the random-order curves (mean over order seeds)."""
    es, p, met = spec
    out: dict[str, list[float]] = {}
    for mode in AUC_MODES:
        values = []
        for e in members:
            aucs = [
                _curve_auc(c)
                for c in e.result.curves.get("backfill", []) or []
                if (c["eval_set"], c["protocol"], c["metric"], c["mode"], c["order"])
                == (es, p, met, mode, AUC_ORDER)
            ]
            aucs = [a for a in aucs if math.isfinite(a)]
            if aucs:
                values.append(float(np.mean(aucs)))
        if values or mode == AUC_MODE:
            out[mode] = values
    return out


def _curve_auc(curve: Mapping[str, Any]) -> float:
    auc = curve.get("auc")
    if auc is not None:
        return float(auc)
    values = [math.nan if v is None else float(v) for v in curve["values"]]
    try:
        return backfill_auc([float(f) for f in curve["fractions"]], values)
    except BCTBenchError:
        return math.nan


def _monotone_summary(members: Sequence[Entry], spec: tuple[str, str, str]) -> str:
    """``"<mode>: monotone k/n"``: how many of the row's random-order curves in its own backfilling mode
    (first eval set, primary metric) never decrease from one fraction to the next."""
    es, p, met = spec
    flags, mode = [], None
    for e in members:
        own = str(e.result.curves.get("backfill_mode") or AUC_MODE)
        for c in e.result.curves.get("backfill", []) or []:
            if (c["eval_set"], c["protocol"], c["metric"], c["mode"], c["order"]) == (
                es,
                p,
                met,
                own,
                AUC_ORDER,
            ):
                vals = np.array([math.nan if v is None else float(v) for v in c["values"]])
                order = np.argsort(np.asarray(c["fractions"], dtype=float), kind="stable")
                flags.append(bool(np.all(np.diff(vals[order]) >= 0)))
                mode = own
    return f"{mode}: monotone {sum(flags)}/{len(flags)}" if flags else ""


# ---------------------------------------------------------------------- rendering
def _value_columns(lb: pd.DataFrame) -> list[str]:
    cols = set(lb.columns)
    return [c for c in lb.columns if f"{c} lo" in cols and f"{c} hi" in cols and f"{c} n" in cols]


def _scale(col: str) -> float:
    return 1.0 if col in P_COLUMNS else 100.0


def _finite(x: Any) -> bool:
    return isinstance(x, int | float | np.floating | np.integer) and math.isfinite(float(x))


def _fmt_cell(mean: Any, lo: Any, hi: Any, n: Any, scale: float, pm: str = "±") -> str:
    """``mean ± half (n)`` (×``scale``); ``half`` is the 95 % CI half-width; ``–`` when there is no mean."""
    if not _finite(mean):
        return "–"
    n = int(n) if _finite(n) else 0
    text = f"{float(mean) * scale:.2f}"
    if _finite(lo) and _finite(hi):
        text += f" {pm} {(float(hi) - float(lo)) / 2 * scale:.2f}"
    return f"{text} ({n})"


def _display_columns(lb: pd.DataFrame) -> list[tuple[str, str, str]]:
    """``[(header, kind, column)]``: kind ``label`` | ``tier`` | ``value`` | ``compat`` (column = eval set) |
    ``text``."""
    out: list[tuple[str, str, str]] = [("method", "label", "method")]
    if "tier" in lb.columns:
        out.append(("tier", "tier", "tier"))
    for col in _value_columns(lb):
        out.append((col, "value", col))
        if col.endswith("→new"):  # after an eval set's self column: its compatibility verdicts
            es = col.split(" ", 1)[0]
            if f"{es} cross>old" in lb.columns:
                out.append((f"{es} compat", "compat", es))
    if "backfill" in lb.columns:
        out.append(("backfill", "text", "backfill"))
    out.append(("flags", "text", "flags"))
    return out


def _verdicts(r: Mapping[str, Any], es: str) -> str:
    a, b = r.get(f"{es} cross>old"), r.get(f"{es} self>old")
    if not isinstance(a, str) and not isinstance(b, str):
        return "–"
    return f"{a if isinstance(a, str) else '–'}{b if isinstance(b, str) else '–'}"


def _cells(lb: pd.DataFrame, pm: str = "±") -> tuple[list[str], list[list[str]]]:
    spec = _display_columns(lb)
    headers = [h for h, _, _ in spec]
    body: list[list[str]] = []
    for _, r in lb.iterrows():
        line = []
        for _, kind, col in spec:
            if kind == "value":
                line.append(_fmt_cell(r[col], r[f"{col} lo"], r[f"{col} hi"], r[f"{col} n"], _scale(col), pm))
            elif kind == "compat":
                line.append(_verdicts(r, col))
            elif kind == "tier":
                line.append(str(int(r[col])) if _finite(r[col]) else "–")
            elif kind == "text":
                v = r[col]
                line.append(str(v) if isinstance(v, str) and v else "")
            else:
                line.append(str(r[col]))
        body.append(line)
    return headers, body


def legend(lb: pd.DataFrame) -> list[str]:
    """The reading notes printed under every rendering: intervals, verdicts, tiers, and what is apart."""
    n_boot = int(lb.attrs.get("n_boot", 0) or 0)
    test = (
        f"⊕ test-set error from a bootstrap over query landmarks ({n_boot} rounds, the same resamples for every "
        "run, so paired differences cancel the shared test set)"
        if n_boot
        else "(results without per-query scores: seeds only)"
    )
    lines = [
        f"Cells: mean ± half-width of the 95 % CI (n seeds); mAP and AUC ×100, P-metrics 0–100. CI = seed-to-seed "
        f"t interval {test}, combined as mean ± t_df·√(s²/n + SE²) with Welch–Satterthwaite df; with n = 1 the "
        "CI holds the test-set part only. AUC: seeds only. Seed k of every row was trained against old model k; "
        "the old→old row is old model k's self-test, over seeds.",
        "compat: (a) cross > old→old, (b) self > old→old, each by a paired test over seeds (same old model per "
        "seed): ✓ significantly above, ≈ not significantly different, ✗ significantly below. P_up / P_comp / P_1 "
        "per seed against that seed's old→old and φ* (independent) self-tests. Verdicts and tiers need ≥ 2 seeds.",
        "tier: rows ranked by P_1; tier 1 = not significantly below the best (paired tests, Holm–Bonferroni), "
        "then the same on the rest. Bold only for a row significantly better than every other.",
    ]
    mdd = lb.attrs.get("mdd") or {}
    if mdd:
        lines.append(
            f"Minimal detectable P_1 difference (paired t, α = 0.05, power 0.8, n = {mdd['n']}, seed part only, "
            f"sd of differences {mdd['sd']:.2f}): {mdd['mdd']:.2f} points — smaller gaps read as ties."
        )
    if "origin" in lb.columns and (lb["origin"] == "yours").any():
        lines.append(
            "(yours): your runs from the results root, beside the reference row of the same run label."
        )
    versions = lb.attrs.get("code_versions") or []
    if len(versions) > 1:
        lines.append("Code versions on this board: " + ", ".join(versions) + ".")
    apart = lb.attrs.get("apart") or []
    if apart:
        lines.append(
            f"Shown apart, not averaged ({len(apart)} results that are not comparable with this board):"
        )
        lines += [f"- {reason}" for reason in apart]
    return lines


def _components(lb: pd.DataFrame) -> list[str]:
    """Markdown table of the CI's two components for the first eval set's cross and self cells and P_1."""
    eval_sets = lb.attrs.get("eval_sets") or []
    if not eval_sets:
        return []
    es, p, met = eval_sets[0]
    cols = [value_column(es, p, met, CROSS), value_column(es, p, met, SELF), "P_1"]
    head = "| method | " + " | ".join(f"{c} seed sd | {c} test SE" for c in cols) + " |"
    lines = [f"Uncertainty components ({es}: seed sd and landmark-bootstrap SE of the seed mean):", "", head]
    lines.append("|---|" + "---:|" * (2 * len(cols)))
    for _, r in lb.iterrows():
        cells = []
        for c in cols:
            scale = _scale(c)
            for part in ("seed_sd", "test_se"):
                v = r.get(f"{c} {part}")
                cells.append(f"{float(v) * scale:.2f}" if _finite(v) else "–")
        lines.append("| " + " | ".join([str(r["method"]), *cells]) + " |")
    return lines


def to_markdown(lb: pd.DataFrame) -> str:
    """Render a GitHub-flavoured markdown table plus the legend (deterministic: fit for golden tests)."""
    headers, body = _cells(lb)
    spec = _display_columns(lb)
    align = ["---" if kind in ("label", "text") else "---:" for _, kind, _ in spec]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
    for (_, r), row in zip(lb.iterrows(), body, strict=True):
        if bool(r.get("best")):
            row = [f"**{row[0]}**", *row[1:]]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
    lines += ["", *legend(lb), "", *_components(lb)]
    return "\n".join(lines) + "\n"


def to_csv(lb: pd.DataFrame) -> str:
    """Render the raw leaderboard frame as CSV (full precision; mAP/AUC as fractions, P-metrics 0–100; CI
    bounds ``lo``/``hi``, ``n``, ``seed_sd`` and ``test_se`` per cell)."""
    return lb.to_csv(index=False, lineterminator="\n")


_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def _tex(text: str) -> str:
    out = "".join(_LATEX_ESCAPES.get(ch, ch) for ch in text)
    return out.replace("→", r"$\to$").replace("φ*", r"$\phi^*$").replace(">", r"$>$")


def to_latex(lb: pd.DataFrame) -> str:
    """Render a booktabs ``tabular``; a row is bold only when it is significantly best (``best``), as in the
    markdown. Needs ``\\usepackage{booktabs}`` in the document."""
    spec = _display_columns(lb)
    lines = [
        r"\begin{tabular}{" + "".join("l" if k in ("label", "text") else "r" for _, k, _ in spec) + "}",
        r"\toprule",
        " & ".join(_tex(h) for h, _, _ in spec) + r" \\",
        r"\midrule",
    ]
    _, body = _cells(lb, pm=r"$\pm$")
    for i, ((_, r), row) in enumerate(zip(lb.iterrows(), body, strict=True)):
        cells = []
        for (_, kind, _), text in zip(spec, row, strict=True):
            if kind == "compat":
                text = text.replace("✓", r"\checkmark").replace("✗", r"$\times$").replace("≈", r"$\approx$")
            elif kind in ("label", "text"):
                text = _tex(text)
            cells.append(text.replace("–", "--"))
        if bool(r.get("best")):
            cells = [r"\textbf{" + c + "}" for c in cells]
        lines.append(" & ".join(cells) + r" \\")
        if r["role"] != "method" and i + 1 < len(lb) and lb["role"].iloc[i + 1] == "method":
            lines.append(r"\midrule")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- plots
def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def _half(r: Mapping[str, Any], col: str) -> float | None:
    """CI half-width of a leaderboard cell (None when there is no interval)."""
    lo, hi = r.get(f"{col} lo"), r.get(f"{col} hi")
    return (float(hi) - float(lo)) / 2 if _finite(lo) and _finite(hi) else None


def _plot_mean_curve(ax: Any, points: pd.DataFrame, *, label: str, marker: str, alpha: float, ls: str = "-"):
    """Plot backfilling-curve ``points`` (``fraction``, ``value`` rows of several runs) as mean ×100 with a ±
    std band."""
    g = points.groupby("fraction", sort=True)["value"]
    mean, std = g.mean() * 100, g.std(ddof=1).fillna(0.0) * 100
    ax.plot(mean.index, mean.to_numpy(), ls=ls, marker=marker, ms=3, label=label)
    ax.fill_between(mean.index, (mean - std).to_numpy(), (mean + std).to_numpy(), alpha=alpha)


def _finish_curve_axes(ax: Any, ref: pd.Series, metric: str, xlabel: str, title: str, *, ref_ls: str) -> None:
    """Old→old reference line (if known), axis labels, title and legend of a backfilling-curve plot."""
    if len(ref) and math.isfinite(float(ref.iloc[0])):
        ax.axhline(float(ref.iloc[0]) * 100, color="black", ls=ref_ls, lw=1, label=REFERENCE)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{metric} ×100")
    ax.set_title(title)
    ax.legend(fontsize=7)


def plot_leaderboard(
    df: pd.DataFrame,
    out_dir: str | os.PathLike,
    lb: pd.DataFrame | None = None,
    curve_methods: Iterable[str] | None = None,
) -> list[Path]:
    """Write PNG plots from a :func:`load_results` frame (matplotlib Agg, no pyplot state); return their paths.

    * ``p_up_vs_p_comp.png``: P_up vs P_comp per method (± std), reference lines at 50;
    * ``self_cross.png``: self (new→new) and cross (new→old) bars per method, one panel per eval set, with the
      old→old line;
    * ``backfill_<eval_set>_<mode>_<order>.png``: primary-metric backfilling curves (×100) vs backfilled
      fraction per method of the first eval set (mean over runs and order seeds, ± std band);
    * ``backfill_<eval_set>_headline.png``: each method's curve in its own backfilling mode (``mixed`` for BCT
      methods, ``merge`` for ``independent`` = training-free distance rank merge and for online backfilling),
      random order; ``curve_methods`` restricts it to those methods and names it ``..._headline_selected.png``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if lb is None:
        raise ValueError("plot_leaderboard needs the leaderboard frame `lb` (from leaderboard())")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    eval_sets = _eval_sets(df)
    paths: list[Path] = []

    def figure(w: float, h: float) -> Figure:
        fig = Figure(figsize=(w, h))
        FigureCanvasAgg(fig)
        return fig

    # 1. P_up vs P_comp
    fig = figure(5.5, 4.5)
    ax = fig.add_subplot()
    pts = lb[(lb["role"] != "reference") & lb["P_up"].notna() & lb["P_comp"].notna()] if len(lb) else lb
    for _, r in pts.iterrows():
        xerr = _half(r, "P_comp")
        yerr = _half(r, "P_up")
        ax.errorbar(r["P_comp"], r["P_up"], xerr=xerr, yerr=yerr, fmt="o", capsize=3)
        ax.annotate(r["key"], (r["P_comp"], r["P_up"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.axhline(50, color="grey", ls="--", lw=0.8)
    ax.axvline(50, color="grey", ls="--", lw=0.8)
    if pts.empty:
        ax.text(
            0.5,
            0.5,
            "no P-metrics (needs independent runs)",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
    ax.set_xlabel("P_comp")
    ax.set_ylabel("P_up")
    ax.set_title("P_up vs P_comp (error bars: 95 % CI)")
    paths.append(_save(fig, out / "p_up_vs_p_comp.png"))

    # 2. self vs cross bars per eval set
    rows = lb[lb["role"] != "reference"]
    if eval_sets:
        fig = figure(max(4.0, 0.9 * len(rows) + 2) * len(eval_sets), 4.0)
        x = np.arange(len(rows))
        for i, (es, p, met) in enumerate(eval_sets):
            ax = fig.add_subplot(1, len(eval_sets), i + 1)
            for off, pair, label in ((-0.2, CROSS, "cross (new→old)"), (0.2, SELF, "self (new→new)")):
                col = value_column(es, p, met, pair)
                ax.bar(
                    x + off,
                    rows[col].to_numpy(dtype=float) * 100,
                    width=0.4,
                    yerr=np.nan_to_num(
                        ((rows[f"{col} hi"] - rows[f"{col} lo"]) / 2).to_numpy(dtype=float) * 100
                    ),
                    capsize=2,
                    label=label,
                )
            old_mean = lb.loc[lb["role"] == "reference", value_column(es, p, met, SELF)]
            if len(old_mean) and math.isfinite(float(old_mean.iloc[0])):
                ax.axhline(float(old_mean.iloc[0]) * 100, color="black", ls="--", lw=1, label=REFERENCE)
            ax.set_xticks(x, list(rows["key"]), rotation=45, ha="right", fontsize=8)
            ax.set_title(f"{es} ({p}, {met}); bars: 95 % CI")
            ax.set_ylabel(f"{met} ×100")
            if i == 0:
                ax.legend(fontsize=7)
        paths.append(_save(fig, out / "self_cross.png"))

    # 3. backfilling curves of the first eval set
    if eval_sets:
        es, p, met = eval_sets[0]
        curves = df[
            (df["kind"] == "backfill")
            & (df["eval_set"] == es)
            & (df["protocol"] == p)
            & (df["metric"] == met)
        ]
        ref = lb.loc[lb["role"] == "reference", value_column(es, p, met, SELF)]
        for mode, order in sorted(
            {(str(a), str(b)) for a, b in zip(curves["mode"], curves["order"], strict=True)}
        ):
            sub = curves[(curves["mode"] == mode) & (curves["order"] == order)]
            fig = figure(5.5, 4.0)
            ax = fig.add_subplot()
            for m in sorted(set(sub["method"])):
                _plot_mean_curve(ax, sub[sub["method"] == m], label=m, marker="o", alpha=0.15)
            _finish_curve_axes(
                ax, ref, met, "backfilled fraction", f"backfilling {es} ({p}), {mode}/{order}", ref_ls="--"
            )
            paths.append(_save(fig, out / f"backfill_{_safe(es)}_{_safe(mode)}_{_safe(order)}.png"))

        # 4. headline curves: every method in its own mode (all methods, plus the selection if one is given)
        head = curves[(curves["mode"] == curves["backfill_mode"]) & (curves["order"] == AUC_ORDER)]
        selections: list[list[str] | None] = [None]
        if curve_methods is not None:
            selections.append(list(curve_methods))
            unknown = sorted(set(selections[1]) - set(head["method"]))
            if unknown:
                raise ConfigError(f"--curve-methods: no {AUC_ORDER}-order curves for {', '.join(unknown)}")
        for selected in selections:
            methods = selected if selected is not None else sorted(set(head["method"]))
            if not methods:
                continue
            fig = figure(6.5, 4.5)
            ax = fig.add_subplot()
            for i, m in enumerate(methods):
                mine = head[head["method"] == m]
                mode = str(mine["backfill_mode"].iloc[0])
                _plot_mean_curve(
                    ax,
                    mine,
                    label=f"{m} ({mode})",
                    marker="os^vDP*Xhp<>"[i % 12],
                    alpha=0.12,
                    ls="--" if mode == "merge" else "-",
                )
            _finish_curve_axes(
                ax,
                ref,
                met,
                "backfilled fraction of the gallery",
                f"backfilling {es} ({p}), each method in its mode, {AUC_ORDER} order",
                ref_ls=":",
            )
            suffix = "_selected" if selected is not None else ""
            paths.append(_save(fig, out / f"backfill_{_safe(es)}_headline{suffix}.png"))
    return paths


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
        f"Sequential upgrade over {steps} generations: g0 is the shared old model, each later generation is "
        "trained by the row's method with its predecessor frozen as the old model.",
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


# ---------------------------------------------------------------------- entry point
_RENDERERS: Mapping[str, Callable[[pd.DataFrame], str]] = {
    "md": to_markdown,
    "markdown": to_markdown,
    "csv": to_csv,
    "latex": to_latex,
    "tex": to_latex,
}


def load_board(
    results_root: str | os.PathLike | None,
    benchmark: str,
    reference_root: str | os.PathLike | None = None,
    *,
    strict: bool = False,
):
    """Read the reference results and the user's results of ``benchmark`` and pass them through the
    provenance gate (:func:`bctbench.comparability.gate`). The same folder given twice counts once."""
    same = (
        results_root is not None
        and reference_root is not None
        and Path(results_root).resolve() == Path(reference_root).resolve()
    )
    if reference_root is None:  # one folder: its results are the board, unmarked
        return gate(read_results(results_root, benchmark) if results_root is not None else [], strict=strict)
    reference = read_results(reference_root, benchmark)
    yours = read_results(results_root, benchmark) if results_root is not None and not same else []
    return gate(reference, yours, strict=strict)


def render(
    results_root: str | os.PathLike | None,
    benchmark: str,
    fmt: str = "md",
    out: str | os.PathLike | None = None,
    plots_dir: str | os.PathLike | None = None,
    curve_methods: Iterable[str] | None = None,
    *,
    reference_root: str | os.PathLike | None = None,
    strict: bool = False,
) -> str:
    """Build the leaderboard of ``benchmark`` from result files alone and return it as text.

    ``results_root``: the user's results (rows marked ``(yours)`` when ``reference_root`` is given too);
    ``reference_root``: the reference results. Both go through the provenance gate; results that are not
    comparable are listed under the table (``strict``: refused with a one-line error instead).
    ``fmt``: ``md`` (alias ``markdown``), ``csv`` or ``latex`` (alias ``tex``). ``out``: also write the text
    there. ``plots_dir``: also write the plots there (``curve_methods``: see :func:`plot_leaderboard`).
    Results of a sequential benchmark (they carry ``curves["sequential"]``) get the sequential view instead
    (:func:`sequential_leaderboard`; ``md`` or ``csv``, no plots). Raises
    :class:`~bctbench.errors.ConfigError` for an unknown format and :class:`~bctbench.errors.BCTBenchError`
    when the benchmark has no readable results.
    """
    renderer = _RENDERERS.get(fmt)
    if renderer is None:
        raise ConfigError(f"unknown leaderboard format '{fmt}'; valid: {', '.join(sorted(_RENDERERS))}")
    board = load_board(results_root, benchmark, reference_root, strict=strict)
    results = [e.result for e in board.entries]
    if not results:
        where = " or ".join(str(Path(r)) for r in (results_root, reference_root) if r is not None)
        raise BCTBenchError(f"no readable, comparable results for benchmark '{benchmark}' under {where}")
    if is_sequential(results):
        return _render_sequential(board, fmt, out)
    df = results_frame(results, keys=[e.row for e in board.entries])
    if not (df["kind"] == "metric").any():
        raise BCTBenchError(f"no readable results for benchmark '{benchmark}'")
    lb = leaderboard(board.entries, apart=board.apart, code_versions=board.code_versions)
    text = renderer(lb)
    if out is not None:
        out_path = Path(out)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(text, encoding="utf-8")
    if plots_dir is not None:
        plot_leaderboard(df, plots_dir, lb, curve_methods=curve_methods)
    return text


def _render_sequential(board, fmt: str, out: str | os.PathLike | None) -> str:
    renderer = _SEQ_RENDERERS.get(fmt)
    if renderer is None:
        raise ConfigError(
            f"format '{fmt}' is not available for sequential benchmarks; valid: {', '.join(sorted(_SEQ_RENDERERS))}"
        )
    lb = sequential_leaderboard(board.entries)
    text = renderer(lb)
    if fmt in ("md", "markdown") and board.apart:
        text += "\nShown apart, not averaged:\n" + "".join(f"- {reason}\n" for reason in board.apart)
    if out is not None:
        out_path = Path(out)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(text, encoding="utf-8")
    return text
