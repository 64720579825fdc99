"""Leaderboard: a pure function of the results folder (``results/<benchmark>/<method>/seed<k>.json``).

Pipeline: :func:`load_results` (RunResult files -> tidy DataFrame) -> :func:`leaderboard` (DataFrame -> one row
per method) -> :func:`to_markdown` / :func:`to_csv` / :func:`to_latex`, and :func:`plot_leaderboard`.

Rows: the reference ``old→old`` (old model, from every run's old→old rows), the paragon ``independent`` (φ*)
and every other method, sorted by P_1 descending (missing P_1 last, ties by name).

Columns, for each eval set at its *primary* (protocol, metric) taken from the results' ``primary`` field (no
dataset names are hard-coded): ``cross`` = new→old (query by the row's model, gallery by the old model) and
``self`` = new→new; the ``old→old`` row shows M(old→old) in both. Cells aggregate seeds: mean, std (ddof=1) and
n. Then per eval set the empirical compatibility flags of Shen et al. on the means, (a) cross > old→old and (b)
self > old→old; AdvBCT's P_up, P_comp and P_1 (``evaluation.md`` §5.2); the backfilling AUC of the first
eval set's primary metric (``random`` order, per run averaged over order seeds), one column per backfilling mode
present (``mixed``; ``merge`` = distance rank merge, evaluation.md §6.1); the run flags.

P-metric convention: computed **per seed** from that seed's self/cross values against the seed-averaged
old→old and φ* self-test means, then mean ± std over seeds (so the spread reflects the method only). φ* gets
P_comp only (P_up and P_1 are "–"). The old→old value of a seed is the mean of that seed's runs' old→old rows
(all runs of a benchmark share one old model, so these agree up to evaluation nondeterminism).

Numbers in the DataFrame are raw (mAP and AUC as fractions, P-metrics in 0–100); renderers show mAP and AUC
×100 with two decimals as ``mean ± std (n)``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bctbench.errors import BCTBenchError, ConfigError
from bctbench.evaluation.metrics import backfill_auc, compatibility_scores
from bctbench.results import ROW_KEYS, RunResult, read_results

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


def results_frame(results: Iterable[RunResult]) -> pd.DataFrame:
    """Flatten RunResults into one tidy frame with a ``kind`` column (columns: :data:`FRAME_COLUMNS`).

    * ``kind="metric"``: one row per metric row (``value`` is a fraction);
    * ``kind="backfill"``: one row per backfilling-curve point (``fraction``, ``value``; ``mode``, ``order``,
      ``order_seed``; ``query_model``/``gallery_model`` empty);
    * ``kind="backfill_auc"``: one row per curve with its AUC (stored ``auc``, else the trapezoid AUC).

    Every row carries ``benchmark, method, seed, flags`` (sorted, comma-joined), ``backfill_mode`` (the run's
    headline backfilling mode, ``curves["backfill_mode"]``, default ``mixed``) and its eval set's primary
    ``primary_protocol`` / ``primary_metric``. Row order follows the results and their metric order, which fixes
    the eval-set order of the leaderboard.
    """
    rows: list[dict[str, Any]] = []
    for res in results:
        base = {"benchmark": res.benchmark, "method": res.method, "seed": int(res.seed)}
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


def load_results(results_root: str | os.PathLike, benchmark: str) -> pd.DataFrame:
    """Read ``results_root/<benchmark>/*/seed*.json`` (bad files skipped with a warning) -> :func:`results_frame`."""
    return results_frame(read_results(results_root, benchmark))


# ---------------------------------------------------------------------- aggregation
def _stats(values: Iterable[float]) -> tuple[float, float, int]:
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    n = int(arr.size)
    if n == 0:
        return math.nan, math.nan, 0
    return float(arr.mean()), float(arr.std(ddof=1)) if n > 1 else math.nan, n


def _per_seed(sel: pd.DataFrame) -> dict[int, float]:
    grouped = sel.groupby("seed", sort=True)["value"].mean()
    return {int(s): float(v) for s, v in grouped.items()}


def _eval_sets(df: pd.DataFrame) -> list[tuple[str, str, str]]:
    """``[(eval_set, protocol, metric)]`` in order of first appearance, with each set's primary pair."""
    out: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    m = df[df["kind"] == "metric"]
    for es, p, met in zip(m["eval_set"], m["primary_protocol"], m["primary_metric"], strict=True):
        if es in seen or not isinstance(p, str) or not isinstance(met, str):
            continue
        seen.add(es)
        out.append((es, p, met))
    return out


def value_column(eval_set: str, protocol: str, metric: str, pair: tuple[str, str]) -> str:
    """Leaderboard column name of one (eval set, protocol, metric, query→gallery) cell."""
    return f"{eval_set} {protocol} {metric} {pair[0]}→{pair[1]}"


def _stat_cols(name: str) -> tuple[str, str, str]:
    return name, f"{name} std", f"{name} n"


def leaderboard(df: pd.DataFrame) -> pd.DataFrame:
    """Aggregate a :func:`load_results` frame into one row per method (see the module docstring).

    Columns: ``method`` (display label), ``key`` (method name), ``role`` (``reference`` / ``paragon`` /
    ``method``), ``flags``, ``seeds``; for each eval set ``<es> <protocol> <metric> new→old`` and ``... new→new``
    (each with ``... std`` and ``... n`` companions) and ``<es> cross>old`` / ``<es> self>old`` (bool or None);
    ``P_up``, ``P_comp``, ``P_1`` (with std / n); ``AUC <es> <protocol> <metric> mixed/random`` (with std / n).
    Raises :class:`~bctbench.errors.ConfigError` when ``df`` mixes benchmarks.
    """
    benchmarks = sorted(set(df["benchmark"]))
    if len(benchmarks) > 1:
        raise ConfigError(f"leaderboard needs results of one benchmark, got {', '.join(benchmarks)}")
    eval_sets = _eval_sets(df)
    metrics = df[df["kind"] == "metric"]
    methods = sorted(set(df["method"]))

    def sel(es: str, p: str, met: str, pair: tuple[str, str], method: str | None = None) -> pd.DataFrame:
        mask = (
            (metrics["eval_set"] == es)
            & (metrics["protocol"] == p)
            & (metrics["metric"] == met)
            & (metrics["query_model"] == pair[0])
            & (metrics["gallery_model"] == pair[1])
        )
        if method is not None:
            mask &= metrics["method"] == method
        return metrics[mask]

    old: dict[str, tuple[float, float, int]] = {}
    paragon: dict[str, float] = {}
    per_seed: dict[str, dict[str, dict[tuple[str, str], dict[int, float]]]] = {m: {} for m in methods}
    for es, p, met in eval_sets:
        old[es] = _stats(_per_seed(sel(es, p, met, OLD)).values())
        for m in methods:
            per_seed[m][es] = {pair: _per_seed(sel(es, p, met, pair, m)) for pair in (CROSS, SELF)}
        paragon[es] = _stats(per_seed.get(PARAGON, {}).get(es, {}).get(SELF, {}).values())[0]

    auc_spec = eval_sets[0] if eval_sets else None
    auc_rows = df[(df["kind"] == "backfill_auc") & (df["order"] == AUC_ORDER)]
    if auc_spec:
        auc_rows = auc_rows[
            (auc_rows["eval_set"] == auc_spec[0])
            & (auc_rows["protocol"] == auc_spec[1])
            & (auc_rows["metric"] == auc_spec[2])
        ]
    # one AUC column per backfilling mode present (mixed always, when there is an eval set)
    auc_modes = [m for m in AUC_MODES if m == AUC_MODE or (auc_rows["mode"] == m).any()] if auc_spec else []
    auc_cols = {
        mode: f"AUC {auc_spec[0]} {auc_spec[1]} {auc_spec[2]} {mode}/{AUC_ORDER}" for mode in auc_modes
    }

    def base_row(label: str, key: str, role: str, flags: str, seeds: int) -> dict[str, Any]:
        return {"method": label, "key": key, "role": role, "flags": flags, "seeds": seeds}

    rows: list[dict[str, Any]] = []
    ref = base_row(
        REFERENCE, REFERENCE, "reference", "", int(metrics[metrics["query_model"] == "old"]["seed"].nunique())
    )
    for es, p, met in eval_sets:
        for pair in (CROSS, SELF):
            ref.update(dict(zip(_stat_cols(value_column(es, p, met, pair)), old[es], strict=True)))
        ref[f"{es} cross>old"] = None
        ref[f"{es} self>old"] = None
    for col in P_COLUMNS:
        ref.update(dict(zip(_stat_cols(col), (math.nan, math.nan, 0), strict=True)))
    for auc_col in auc_cols.values():
        ref.update(dict(zip(_stat_cols(auc_col), (math.nan, math.nan, 0), strict=True)))
    ref["backfill"] = ""
    rows.append(ref)

    usable = [es for es, _, _ in eval_sets if math.isfinite(old[es][0]) and math.isfinite(paragon[es])]
    for m in methods:
        mflags = sorted({f for fl in df.loc[df["method"] == m, "flags"] for f in str(fl).split(",") if f})
        seeds = sorted(set(df.loc[df["method"] == m, "seed"]))
        role = "paragon" if m == PARAGON else "method"
        row = base_row(f"{m} (φ*)" if role == "paragon" else m, m, role, ",".join(mflags), len(seeds))
        for es, p, met in eval_sets:
            means = {}
            for pair in (CROSS, SELF):
                stats = _stats(per_seed[m][es][pair].values())
                row.update(dict(zip(_stat_cols(value_column(es, p, met, pair)), stats, strict=True)))
                means[pair] = stats[0]
            o = old[es][0]
            row[f"{es} cross>old"] = (
                None if math.isnan(means[CROSS]) or math.isnan(o) else bool(means[CROSS] > o)
            )
            row[f"{es} self>old"] = (
                None if math.isnan(means[SELF]) or math.isnan(o) else bool(means[SELF] > o)
            )

        pvals: dict[str, list[float]] = {c: [] for c in P_COLUMNS}
        if usable:
            for s in seeds:
                cross = {es: per_seed[m][es][CROSS].get(s, math.nan) for es in usable}
                self_ = {es: per_seed[m][es][SELF].get(s, math.nan) for es in usable}
                if not all(math.isfinite(v) for v in (*cross.values(), *self_.values())):
                    continue  # this seed lacks an eval set: no P-metrics for it
                sc = compatibility_scores(
                    None if role == "paragon" else self_,  # φ* is its own reference: P_comp only
                    cross,
                    {es: old[es][0] for es in usable},
                    {es: paragon[es] for es in usable},
                    beta=1.0,
                )
                pvals["P_up"].append(float(sc["P_up"]))
                pvals["P_comp"].append(float(sc["P_comp"]))
                pvals["P_1"].append(float(sc["P_beta"]))
        for col in P_COLUMNS:
            row.update(dict(zip(_stat_cols(col), _stats(pvals[col]), strict=True)))

        for mode, auc_col in auc_cols.items():
            mine = auc_rows[(auc_rows["method"] == m) & (auc_rows["mode"] == mode)]
            per_run = mine.groupby("seed", sort=True)["value"].mean() if len(mine) else []
            row.update(dict(zip(_stat_cols(auc_col), _stats(list(per_run)), strict=True)))
        row["backfill"] = _monotone_summary(df, m, auc_spec) if auc_spec else ""
        rows.append(row)

    def sort_key(r: dict[str, Any]) -> tuple:
        rank = {"reference": 0, "paragon": 1}.get(r["role"], 2)
        p1 = r.get("P_1", math.nan)
        return (rank, 0 if math.isfinite(p1) else 1, -p1 if math.isfinite(p1) else 0.0, r["key"])

    rows.sort(key=sort_key)
    lb = pd.DataFrame(rows)
    lb.index = pd.RangeIndex(len(lb))
    return lb


def _monotone_summary(df: pd.DataFrame, method: str, spec: tuple[str, str, str]) -> str:
    """``"<mode>: monotone k/n"``: how many of the method's random-order curves in its own backfilling mode
    (first eval set, primary metric) never decrease from one fraction to the next."""
    es, p, met = spec
    pts = df[
        (df["kind"] == "backfill")
        & (df["method"] == method)
        & (df["eval_set"] == es)
        & (df["protocol"] == p)
        & (df["metric"] == met)
        & (df["order"] == AUC_ORDER)
        & (df["mode"] == df["backfill_mode"])
    ]
    if pts.empty:
        return ""
    flags = [
        bool(np.all(np.diff(g.sort_values("fraction")["value"].to_numpy()) >= 0))
        for _, g in pts.groupby(["seed", "order_seed"], dropna=False)
    ]
    return f"{pts['mode'].iloc[0]}: monotone {sum(flags)}/{len(flags)}"


# ---------------------------------------------------------------------- rendering
def _value_columns(lb: pd.DataFrame) -> list[str]:
    cols = set(lb.columns)
    return [c for c in lb.columns if f"{c} std" in cols and f"{c} n" in cols]


def _scale(col: str) -> float:
    return 1.0 if col in P_COLUMNS else 100.0


def _fmt_cell(mean: float, std: float, n: Any, scale: float, pm: str = "±") -> str:
    if mean is None or not math.isfinite(mean):
        return "–"
    n = int(n) if n is not None and not (isinstance(n, float) and math.isnan(n)) else 0
    text = f"{mean * scale:.2f}"
    if std is not None and math.isfinite(std) and n > 1:
        text += f" {pm} {std * scale:.2f}"
    return f"{text} ({n})"


def _fmt_flag(v: Any, yes: str = "✓", no: str = "✗") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return yes if bool(v) else no


def _display_columns(lb: pd.DataFrame) -> list[tuple[str, str, str]]:
    """``[(header, kind, column)]``: kind ``label`` | ``value`` | ``compat`` (column = eval set) | ``text``."""
    out: list[tuple[str, str, str]] = [("method", "label", "method")]
    values = _value_columns(lb)
    done: set[str] = set()
    for col in values:
        if col in done:
            continue
        done.add(col)
        out.append((col, "value", col))
        if col.endswith("→new"):  # after an eval set's self column: its compatibility flags
            es = col.split(" ", 1)[0]
            if f"{es} cross>old" in lb.columns:
                out.append((f"{es} compat", "compat", es))
    if "backfill" in lb.columns:
        out.append(("backfill", "text", "backfill"))
    out.append(("flags", "text", "flags"))
    return out


def _cells(
    lb: pd.DataFrame, pm: str = "±", yes: str = "✓", no: str = "✗"
) -> tuple[list[str], list[list[str]]]:
    spec = _display_columns(lb)
    headers = [h for h, _, _ in spec]
    body: list[list[str]] = []
    for _, r in lb.iterrows():
        line = []
        for _, kind, col in spec:
            if kind == "value":
                line.append(_fmt_cell(r[col], r[f"{col} std"], r[f"{col} n"], _scale(col), pm))
            elif kind == "compat":
                a, b = r[f"{col} cross>old"], r[f"{col} self>old"]
                line.append(
                    "–" if a is None and b is None else f"{_fmt_flag(a, yes, no)}{_fmt_flag(b, yes, no)}"
                )
            elif kind == "text":
                v = r[col]
                line.append(str(v) if isinstance(v, str) and v else "")
            else:
                line.append(str(r[col]))
        body.append(line)
    return headers, body


def to_markdown(lb: pd.DataFrame) -> str:
    """Render a GitHub-flavoured markdown table plus a legend (deterministic: fit for golden tests)."""
    headers, body = _cells(lb)
    spec = _display_columns(lb)
    align = ["---" if kind in ("label", "text") else "---:" for _, kind, _ in spec]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body]
    lines += [
        "",
        "Cells: mean ± std (n seeds); mAP and AUC ×100. new→old: query by the row's model, gallery by the old "
        "model (cross-test); the old→old row shows the old model's self-test in both columns.",
        "compat: (a) cross > old→old, (b) self > old→old, on means (✓ yes, ✗ no). P_up / P_comp / P_1 per "
        "seed against mean old→old and φ* (independent) self-tests. backfill: the method's own backfilling mode "
        "and how many of its random-order curves (AUC eval set) never decrease. flags: non-default fidelity flags.",
    ]
    return "\n".join(lines) + "\n"


def to_csv(lb: pd.DataFrame) -> str:
    """Render the raw leaderboard frame as CSV (full precision; mAP/AUC as fractions, P-metrics 0–100)."""
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
    """Render a booktabs ``tabular``; the best mean per value column among methods (not references) is bold.

    Needs ``\\usepackage{booktabs}`` and ``amssymb`` (``\\checkmark``) in the document.
    """
    spec = _display_columns(lb)
    methods = lb["role"] == "method"
    if not methods.any():
        methods = lb["role"] != "reference"
    best: dict[str, float] = {}
    for _, kind, col in spec:
        if kind == "value":
            vals = pd.to_numeric(lb.loc[methods, col], errors="coerce")
            if vals.notna().any():
                best[col] = float(vals.max())
    lines = [
        r"\begin{tabular}{" + "".join("l" if k in ("label", "text") else "r" for _, k, _ in spec) + "}",
        r"\toprule",
        " & ".join(_tex(h) for h, _, _ in spec) + r" \\",
        r"\midrule",
    ]
    for i, (_, r) in enumerate(lb.iterrows()):
        cells = []
        for _, kind, col in spec:
            if kind == "value":
                text = _fmt_cell(r[col], r[f"{col} std"], r[f"{col} n"], _scale(col), pm=r"$\pm$")
                mean = r[col]
                if (
                    col in best
                    and bool(methods.iloc[i])
                    and mean is not None
                    and math.isfinite(mean)
                    and math.isclose(float(mean), best[col], rel_tol=0, abs_tol=1e-12)
                ):
                    text = r"\textbf{" + text + "}"
                cells.append(text.replace("–", "--"))
            elif kind == "compat":
                a, b = r[f"{col} cross>old"], r[f"{col} self>old"]
                cells.append(
                    "--"
                    if a is None and b is None
                    else _fmt_flag(a, r"\checkmark", r"$\times$").replace("–", "--")
                    + _fmt_flag(b, r"\checkmark", r"$\times$").replace("–", "--")
                )
            elif kind == "text":
                v = r[col]
                cells.append(_tex(v) if isinstance(v, str) else "")
            else:
                cells.append(_tex(str(r[col])))
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

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lb = leaderboard(df) if lb is None else lb
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
        xerr = r["P_comp std"] if math.isfinite(r["P_comp std"]) else None
        yerr = r["P_up std"] if math.isfinite(r["P_up std"]) else None
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
    ax.set_title("P_up vs P_comp")
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
                    yerr=np.nan_to_num(rows[f"{col} std"].to_numpy(dtype=float) * 100),
                    capsize=2,
                    label=label,
                )
            old_mean = lb.loc[lb["role"] == "reference", value_column(es, p, met, SELF)]
            if len(old_mean) and math.isfinite(float(old_mean.iloc[0])):
                ax.axhline(float(old_mean.iloc[0]) * 100, color="black", ls="--", lw=1, label=REFERENCE)
            ax.set_xticks(x, list(rows["key"]), rotation=45, ha="right", fontsize=8)
            ax.set_title(f"{es} ({p}, {met})")
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


def sequential_leaderboard(results: Iterable[RunResult]) -> pd.DataFrame:
    """One row per method of a sequential benchmark, from its RunResults alone.

    For each eval set at its primary (protocol, metric): every matrix entry ``C[i][j] = M(g_i -> g_j)``,
    ``i >= j`` (column ``<es> <protocol> <metric> g{i}→g{j}``), then ``<es> AC`` and ``<es> AA``
    (``evaluation.md`` §5.3), each with ``std`` and ``n`` companions: AC and AA are computed per seed from that
    seed's matrix (:func:`~bctbench.evaluation.sequential.compatibility_matrices`), then mean ± std over seeds.
    Rows are sorted by the first eval set's AA (descending, missing last), ties by name. Columns ``method``,
    ``flags``, ``seeds``, ``steps``. Raises :class:`~bctbench.errors.ConfigError` when results mix benchmarks
    or numbers of generations.
    """
    from bctbench.evaluation.sequential import compatibility_matrices

    results = list(results)
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
    for res in results:
        per_method.setdefault(res.method, []).append(res)

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
                row.update(dict(zip(_stat_cols(f"{es} {p} {met} g{i}→g{j}"), _stats(vals), strict=True)))
            for key in SEQ_SUMMARY:
                vals = [float(np.mean([x[key] for x in xs])) for xs in per_seed.values()]
                row.update(dict(zip(_stat_cols(f"{es} {key}"), _stats(vals), strict=True)))
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
            cells = [_fmt_cell(r[c], r[f"{c} std"], r[f"{c} n"], 100.0) for _, c in cols]
            lines.append("| " + " | ".join([str(r["method"]), *cells, str(r["flags"] or "")]) + " |")
        lines.append("")
    lines += [
        f"Sequential upgrade over {steps} generations: g0 is the shared old model, each later generation is "
        "trained by the row's method with its predecessor frozen as the old model.",
        "Cells: mean ± std (n seeds), ×100. gi→gj: query embedded by generation i, gallery by generation j "
        "(gi→gi: self-test). AC: share of pairs i > j with gi→gj > gj→gj; AA: mean of all entries i ≥ j "
        "(evaluation.md §5.3), per seed, then over seeds.",
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


def render(
    results_root: str | os.PathLike,
    benchmark: str,
    fmt: str = "md",
    out: str | os.PathLike | None = None,
    plots_dir: str | os.PathLike | None = None,
    curve_methods: Iterable[str] | None = None,
) -> str:
    """Build the leaderboard of ``benchmark`` from ``results_root`` alone and return it as text.

    ``fmt``: ``md`` (alias ``markdown``), ``csv`` or ``latex`` (alias ``tex``). ``out``: also write the text
    there. ``plots_dir``: also write the PNG plots there (``curve_methods``: see :func:`plot_leaderboard`). Results of a sequential benchmark (they carry
    ``curves["sequential"]``) get the sequential view instead (:func:`sequential_leaderboard`; ``md`` or
    ``csv``, no plots). Raises :class:`~bctbench.errors.ConfigError` for an
    unknown format and :class:`~bctbench.errors.BCTBenchError` when the benchmark has no readable results.
    """
    renderer = _RENDERERS.get(fmt)
    if renderer is None:
        raise ConfigError(f"unknown leaderboard format '{fmt}'; valid: {', '.join(sorted(_RENDERERS))}")
    results = read_results(results_root, benchmark)
    if is_sequential(results):
        return _render_sequential(results, fmt, out)
    df = results_frame(results)
    if df.empty or not (df["kind"] == "metric").any():
        raise BCTBenchError(f"no readable results for benchmark '{benchmark}' under {Path(results_root)}")
    lb = leaderboard(df)
    text = renderer(lb)
    if out is not None:
        out_path = Path(out)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(text, encoding="utf-8")
    if plots_dir is not None:
        plot_leaderboard(df, plots_dir, lb, curve_methods=curve_methods)
    return text


def _render_sequential(results: list[RunResult], fmt: str, out: str | os.PathLike | None) -> str:
    renderer = _SEQ_RENDERERS.get(fmt)
    if renderer is None:
        raise ConfigError(
            f"format '{fmt}' is not available for sequential benchmarks; valid: {', '.join(sorted(_SEQ_RENDERERS))}"
        )
    text = renderer(sequential_leaderboard(results))
    if out is not None:
        out_path = Path(out)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(text, encoding="utf-8")
    return text
