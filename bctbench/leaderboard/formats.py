"""Text renderings of a leaderboard table: Markdown (with its legend), CSV and LaTeX; cells are ``mean ± CI
half-width (n)``, mAP and AUC ×100."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from bctbench.leaderboard.table import CROSS, P_COLUMNS, SELF, value_column


# ---------------------------------------------------------------------- rendering
def _value_columns(lb: pd.DataFrame) -> list[str]:
    cols = set(lb.columns)
    return [c for c in lb.columns if f"{c} lo" in cols and f"{c} hi" in cols and f"{c} n" in cols]


def _scale(col: str) -> float:
    return 1.0 if col in P_COLUMNS else 100.0


def _finite(x: Any) -> bool:
    return isinstance(x, int | float | np.floating | np.integer) and math.isfinite(float(x))


def _fmt_cell(mean: Any, lo: Any, hi: Any, n: Any, scale: float, pm: str = "±", show_n: bool = True) -> str:
    """``mean ± half (n)`` (×``scale``); ``half`` is the 95 % CI half-width; ``–`` when there is no mean;
    without `` (n)`` when not ``show_n``."""
    if not _finite(mean):
        return "–"
    n = int(n) if _finite(n) else 0
    text = f"{float(mean) * scale:.2f}"
    if _finite(lo) and _finite(hi):
        text += f" {pm} {(float(hi) - float(lo)) / 2 * scale:.2f}"
    return f"{text} ({n})" if show_n else text


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


def _cells(lb: pd.DataFrame, pm: str = "±", show_n: bool = True) -> tuple[list[str], list[list[str]]]:
    spec = _display_columns(lb)
    headers = [h for h, _, _ in spec]
    body: list[list[str]] = []
    for _, r in lb.iterrows():
        line = []
        for _, kind, col in spec:
            if kind == "value":
                mean, lo, hi, n = (r[c] for c in (col, f"{col} lo", f"{col} hi", f"{col} n"))
                line.append(_fmt_cell(mean, lo, hi, n, _scale(col), pm, show_n))
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
    if any(str(c).startswith("NFR ") for c in lb.columns):
        lines.append(
            "NFR: negative flip rate of the cross-test, the share of queries whose top-1 result is right under "
            "old→old and wrong under new→old (seeds only; lower is better)."
        )
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


_LATEX_CHARS = {
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
    "|": r"\textbar{}",
    ">": r"$>$",
    "<": r"$<$",
    "→": r"$\to$",
    "φ": r"$\phi$",
    "±": r"$\pm$",
    "⊕": r"$\oplus$",
    "×": r"$\times$",
    "≈": r"$\approx$",
    "✓": r"\checkmark{}",
    "✗": r"$\times$",
    "–": "--",
    "—": "---",
}
"""Plain text → LaTeX, one character at a time (every other character is ASCII in practice: method names are
lower snake case)."""


def _tex(text: str) -> str:
    """Escape ``text`` for LaTeX (ASCII out for the characters a leaderboard uses)."""
    return "".join(_LATEX_CHARS.get(ch, ch) for ch in text).replace(r"$\phi$*", r"$\phi^*$")


def _latex_groups(lb: pd.DataFrame, spec: list[tuple[str, str, str]]) -> list[tuple[str, str]]:
    """``[(group, sub-header)]`` (raw LaTeX) per displayed column: an eval set's cross / self / compat under
    ``<es> (<protocol>, <metric>)``, the P-metrics together, the AUCs under their curve; others alone."""
    by_col: dict[str, tuple[str, str]] = {}
    for es, p, met in lb.attrs.get("eval_sets") or []:
        group = _tex(f"{es} ({p}, {met})")
        by_col[value_column(es, p, met, CROSS)] = (group, r"cross")
        by_col[value_column(es, p, met, SELF)] = (group, r"self")
        by_col[f"compat:{es}"] = (group, "compat")
    names = {"P_up": r"$P_\mathrm{up}$", "P_comp": r"$P_\mathrm{comp}$", "P_1": r"$P_1$"}
    out = []
    for header, kind, col in spec:
        key = f"compat:{col}" if kind == "compat" else col
        if key in by_col:
            out.append(by_col[key])
        elif col in names:
            out.append(("P-metrics", names[col]))
        elif kind == "value" and col.startswith("AUC ") and "/" in col:
            curve, mode_order = col.removeprefix("AUC ").rsplit(" ", 1)
            mode, order = mode_order.split("/", 1)
            out.append((_tex(f"AUC {curve}, {order} order"), _tex(mode)))
        else:
            out.append(("", _tex(header)))
    return out


def _latex_caption(lb: pd.DataFrame, show_n: bool, n: int | None, backfill: bool) -> str:
    """Caption of :func:`to_latex`: benchmark, metrics, what ± means, n (once or per cell), the verdicts,
    tiers and what is bold."""
    bench = str(lb.attrs.get("benchmark") or "")
    metrics = ", ".join(_tex(f"{es} {p} {met}") for es, p, met in lb.attrs.get("eval_sets") or [])
    seeds = rf"over $n = {n}$ seeds" if not show_n and n is not None else "over $n$ seeds (in parentheses)"
    parts = (
        r"seed-to-seed $t$ interval $\oplus$ landmark bootstrap of the test set"
        if lb.attrs.get("n_boot")
        else r"seed-to-seed $t$ interval"
    )
    best = lb.loc[lb["best"].astype(bool), "method"].tolist() if "best" in lb.columns else []
    bold = (
        rf"Bold: {_tex(best[0])}, significantly better than every other row on $P_1$ (paired tests, "
        r"Holm--Bonferroni)."
        if best
        else r"No row is significantly better than every other on $P_1$, so none is bold."
    )
    text = [
        (f"{_tex(bench)}: " if bench else "") + "backward-compatibility leaderboard.",
        rf"Cells: mean $\pm$ half-width of the 95\,\% CI {seeds} ({parts}).",
        (f"{metrics} and AUC" if metrics else "mAP and AUC") + r" $\times 100$ (AUC: seed interval only); "
        r"$P$-metrics on 0--100.",
        r"cross: new$\to$old, self: new$\to$new; old$\to$old: the old model's self-test; "
        r"independent ($\phi^*$): the paragon.",
        r"compat: (a) cross $>$ old$\to$old, (b) self $>$ old$\to$old, by paired tests over seeds "
        r"(\checkmark{} significantly above, $\approx$ not significantly different, $\times$ significantly below).",
        r"tier: ranked by $P_1$; tier 1 = not significantly below the best (paired tests, Holm--Bonferroni).",
        bold,
    ]
    if backfill:
        text.append(
            "backfill: how many of the row's random-order backfilling curves in its own mode never decrease."
        )
    apart = lb.attrs.get("apart") or []
    if apart:
        text.append(f"{len(apart)} result(s) not comparable with this board are not shown.")
    return " ".join(text)


def to_latex(lb: pd.DataFrame) -> str:
    """Render a ``table`` with a booktabs ``tabular``, ``\\caption`` and ``\\label{tab:<benchmark>}``.

    Columns as in the markdown (empty text columns dropped), grouped under two header rows; cells
    ``mean $\\pm$ half-width`` with `` (n)`` only when the cells' seed counts differ (else n is in the
    caption). Bold exactly as the markdown: the method name of the row that is significantly best
    (``best``), nothing else. Needs ``\\usepackage{booktabs,amssymb}``; the output is ASCII.
    """
    spec = [
        s
        for s in _display_columns(lb)
        if s[1] != "text" or lb[s[2]].map(lambda v: isinstance(v, str) and bool(v)).any()
    ]
    cols = [col for _, _, col in spec]
    value_cols = [col for _, kind, col in spec if kind == "value"]
    ns = {
        int(r[f"{c} n"])
        for _, r in lb.iterrows()
        for c in value_cols
        if _finite(r[c]) and _finite(r[f"{c} n"])
    }
    show_n = len(ns) != 1
    groups = _latex_groups(lb, spec)
    bench = str(lb.attrs.get("benchmark") or "leaderboard")
    align = "".join({"label": "l", "text": "l", "compat": "c"}.get(k, "r") for _, k, _ in spec)
    lines = [
        r"% needs \usepackage{booktabs,amssymb}",
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        r"\setlength{\tabcolsep}{3pt}",
        r"\caption{"
        + _latex_caption(lb, show_n, min(ns) if len(ns) == 1 else None, "backfill" in cols)
        + "}",
        r"\label{tab:" + re.sub(r"[^A-Za-z0-9_.:-]+", "-", bench) + "}",
        r"\begin{tabular}{" + align + "}",
        r"\toprule",
    ]
    if any(g for g, _ in groups):  # first header row: groups over their columns, with rules below
        top, rules, i = [], [], 0
        while i < len(groups):
            j = i
            while j + 1 < len(groups) and groups[j + 1][0] == groups[i][0] and groups[i][0]:
                j += 1
            g = groups[i][0]
            top.append(rf"\multicolumn{{{j - i + 1}}}{{c}}{{{g}}}" if g else "")
            if g:
                rules.append(rf"\cmidrule(lr){{{i + 1}-{j + 1}}}")
            i = j + 1
        lines += [" & ".join(top) + r" \\", " ".join(rules)]
    lines += [" & ".join(sub for _, sub in groups) + r" \\", r"\midrule"]
    _, body = _cells(lb, pm="±", show_n=show_n)
    full = _display_columns(lb)
    keep = [full.index(s) for s in spec]
    for i, ((_, r), row) in enumerate(zip(lb.iterrows(), body, strict=True)):
        cells = []
        for (_, kind, _), text in zip(spec, (row[k] for k in keep), strict=True):
            text = r"\,".join(_tex(ch) for ch in text) if kind == "compat" and text != "–" else _tex(text)
            cells.append(text)
        if bool(r.get("best")):  # as in the markdown: the method name only
            cells[0] = r"\textbf{" + cells[0] + "}"
        lines.append(" & ".join(cells) + r" \\")
        if r["role"] != "method" and i + 1 < len(lb) and lb["role"].iloc[i + 1] == "method":
            lines.append(r"\midrule")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- entry point
_RENDERERS: Mapping[str, Callable[[pd.DataFrame], str]] = {
    "md": to_markdown,
    "markdown": to_markdown,
    "csv": to_csv,
    "latex": to_latex,
    "tex": to_latex,
}
