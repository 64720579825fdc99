"""Figures of a leaderboard: self/cross bars with CIs, P_up vs P_comp, backfilling curves."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bctbench.errors import ConfigError
from bctbench.leaderboard.formats import _finite
from bctbench.leaderboard.table import AUC_ORDER, CROSS, REFERENCE, SELF, _eval_sets, value_column


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
