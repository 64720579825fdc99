"""Text renderings of a leaderboard table: Markdown (with its legend), CSV and LaTeX; cells are ``mean ± CI
half-width (n)``, mAP and AUC ×100."""

from __future__ import annotations

import math
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


# ---------------------------------------------------------------------- entry point
_RENDERERS: Mapping[str, Callable[[pd.DataFrame], str]] = {
    "md": to_markdown,
    "markdown": to_markdown,
    "csv": to_csv,
    "latex": to_latex,
    "tex": to_latex,
}
