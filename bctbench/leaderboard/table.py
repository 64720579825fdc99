"""The leaderboard table: result files → a long frame → one row per run label and origin with 95 % CIs,
paired ✓/≈/✗ compatibility verdicts, P_up/P_comp/P_1 (``docs/evaluation.md`` §5.2), backfilling AUCs and
tiers.

Numbers in the DataFrame are raw (mAP and AUC as fractions, P-metrics in 0–100). Columns, for each eval
set at its *primary* (protocol, metric) from the results' ``primary`` field: ``cross`` = new→old (gallery
by the old model of the same seed), ``self`` = new→new; the ``old→old`` row shows old model k's self-test
over seeds k."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from bctbench.comparability import REFERENCE as ORIGIN_REF
from bctbench.comparability import Entry
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

#: columns of a preset row: its P_1 minus its method's default P_1, paired over their common seeds
VS_DEFAULT = "ΔP_1 vs default"


CROSS = ("new", "old")


SELF = ("new", "new")


OLD = ("old", "old")


P_COLUMNS = ("P_up", "P_comp", "P_1")


AUC_MODE = "mixed"


AUC_ORDER = "random"


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
N_BOOT = 1000


BOOT_SEED = 0


LEVEL = 0.95


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
    test against the same seed's old→old. ``NFR <es> <protocol> top-1``: negative flip rate of the cross-test
    against old→old (seeds-only t interval). ``P_up``, ``P_comp``, ``P_1`` per seed against that seed's
    old→old and φ* (bootstrapped the same way). ``tier``: groups by paired tests on P_1 with Holm correction
    (1 = not significantly below the best); ``best``: True only for a significantly best row. Backfilling AUC
    columns (mean with a seeds-only t interval). ``attrs``: ``benchmark``, ``eval_sets``, ``apart``, ``code_versions``,
    ``mdd`` (minimal detectable P_1 difference), ``n_boot``, ``p1_per_seed`` (``{row key: {seed: P_1}}``),
    ``p1_boot_per_seed`` (``{row key: {seed: float[B] or None}}``, the landmark-bootstrap replicates).
    A row of a method with a preset or other hyperparameters also gets ``ΔP_1 vs default`` (``low``, ``high``,
    ``seeds``, ``verdict``; ``default row``): the paired P_1 difference to the method's default row.
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
        for spec in eval_sets:
            values = _nfr_per_seed(members, spec)
            if values:
                r.update(_interval_fields(nfr_column(spec), combined_interval(values, level=LEVEL)))
        rows.append(r)

    # a preset / other-hyperparameter row against its method's default row (same origin): paired P_1 difference
    keys = {r["key"] for r in rows}
    for r in rows[1:]:
        base = _default_row(r, keys)
        if base is not None:
            cmp = _paired(p_all[r["key"]]["P_1"], p_all[base]["P_1"])
            if cmp is not None:
                r.update(
                    {
                        VS_DEFAULT: cmp.mean,
                        f"{VS_DEFAULT} low": cmp.low,
                        f"{VS_DEFAULT} high": cmp.high,
                        f"{VS_DEFAULT} seeds": cmp.n,
                        f"{VS_DEFAULT} verdict": cmp.verdict,
                        "default row": base,
                    }
                )

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

    by_key = {x["key"]: x for x in rows}  # list.sort empties `rows` while it runs: look anchors up here

    def sort_key(r: dict[str, Any]) -> tuple:
        rank = {"reference": 0, "paragon": 1}.get(r["role"], 2)
        anchor = by_key.get(r["key"].removesuffix(" (yours)"), r)
        tier = anchor.get("tier") or 10**6
        p1 = anchor.get("P_1", math.nan)
        p1 = -p1 if isinstance(p1, float) and math.isfinite(p1) else math.inf
        return (rank, tier, p1, anchor["key"], r["origin"] != ORIGIN_REF)

    rows.sort(key=sort_key)
    lb = pd.DataFrame(rows)
    lb.index = pd.RangeIndex(len(lb))
    lb.attrs.update(
        {
            "benchmark": benchmarks[0] if benchmarks else "",
            "eval_sets": eval_sets,
            "apart": list(apart),
            "code_versions": list(code_versions),
            "mdd": mdd,
            "n_boot": n_boot if boot.weights else 0,
            "p1_per_seed": {row: dict(p_all[row]["P_1"].value) for row in groups},
            "p1_boot_per_seed": {row: dict(p_all[row]["P_1"].boot) for row in groups},
        }
    )
    return lb


def _default_row(r: Mapping[str, Any], keys: set[str]) -> str | None:
    """Key of the default-hyperparameter row of ``r``'s method on the same origin, when ``r`` is another one."""
    if r.get("role") != "method":
        return None
    yours = " (yours)" if r["key"].endswith(" (yours)") else ""
    base = f"{r['name']}{yours}"
    return base if base != r["key"] and base in keys else None


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


def nfr_column(spec: tuple[str, str, str]) -> str:
    return f"NFR {spec[0]} {spec[1]} top-1"


def _nfr_per_seed(members: Sequence[Entry], spec: tuple[str, str, str]) -> list[float]:
    """Each seed's negative flip rate of the cross-test: the share of queries whose top-1 is right under
    old→old and wrong under new→old (the backfilling curve's NFR at fraction 0; mean over order seeds)."""
    es, p, met = spec
    values = []
    for e in members:
        flips = []
        for c in e.result.curves.get("backfill", []) or []:
            if (c["eval_set"], c["protocol"], c["metric"], c["mode"]) != (es, p, met, AUC_MODE):
                continue
            nfr = c.get("nfr") or []
            at0 = [
                float(v)
                for f, v in zip(c["fractions"], nfr, strict=False)
                if float(f) == 0.0 and v is not None
            ]
            flips += [v for v in at0 if math.isfinite(v)]
        if flips:
            values.append(float(np.mean(flips)))
    return values


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
