"""Figures of a leaderboard, each saved as PDF (vector) and PNG: P_up vs P_comp, self/cross per eval set and
backfilling curves per eval set, mode and order.

Every figure uses the fixed method styles of :mod:`bctbench.leaderboard.style` (colour + marker per method,
``old→old`` black dashed), ≥ 8 pt fonts at the saved size on a single-column (3.3 in) or double-column (7 in)
canvas, axes in % (mAP ×100, backfilled fraction ×100) and a title naming the benchmark and the eval set.
Error bars and bands say in the legend what they are and over how many seeds."""

from __future__ import annotations

import logging
import math
import os
import re
import textwrap
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bctbench.errors import ConfigError
from bctbench.leaderboard.formats import _finite
from bctbench.leaderboard.style import (
    DOUBLE_COLUMN_IN,
    RC,
    REFERENCE_STYLE,
    SINGLE_COLUMN_IN,
    method_style,
)
from bctbench.leaderboard.table import AUC_ORDER, CROSS, LEVEL, REFERENCE, SELF, _eval_sets, value_column

FORMATS = ("pdf", "png")
"""Every figure is written in each of these formats."""

_REF_LINE = {"color": "0.45", "ls": ":", "lw": 0.8}  # parity lines at P = 50


# ---------------------------------------------------------------------- helpers
def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")


def _figure(width: float, height: float) -> Any:
    """A pyplot-free Agg figure of ``width`` × ``height`` inches with constrained layout."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _half(r: Mapping[str, Any], col: str) -> float:
    """CI half-width of a leaderboard cell (NaN when there is no interval)."""
    lo, hi = r.get(f"{col} lo"), r.get(f"{col} hi")
    return (float(hi) - float(lo)) / 2 if _finite(lo) and _finite(hi) else math.nan


def _n_text(ns: Iterable[Any]) -> str:
    """``"n = 3 seeds"`` or ``"n = 1–3 seeds"`` from the seed counts of the plotted cells."""
    ns = sorted({int(n) for n in ns if _finite(n) and n > 0})
    if not ns:
        return "no seeds"
    span = f"{ns[0]}" if len(ns) == 1 else f"{ns[0]}–{ns[-1]}"
    return f"n = {span} seed{'s' if ns[-1] > 1 else ''}"


def _ci_text(lb: pd.DataFrame, ns: Iterable[Any]) -> str:
    """Legend text of the error bars of leaderboard cells: level, seeds, and whether the landmark bootstrap
    of the test set is in."""
    parts = "seed t ⊕ landmark bootstrap" if lb.attrs.get("n_boot") else "seed t interval"
    return f"bars: {LEVEL * 100:.0f} % CI over {_n_text(ns)}\n({parts})"


def _benchmark(df: pd.DataFrame, lb: pd.DataFrame) -> str:
    if lb.attrs.get("benchmark"):
        return str(lb.attrs["benchmark"])
    names = sorted({str(b) for b in df["benchmark"].dropna()})
    return names[0] if len(names) == 1 else "leaderboard"


def _title(fig: Any, text: str) -> None:
    """The figure's title, each plain line wrapped at spaces to the figure width (≈ 5 pt per character;
    lines with mathtext are left as they are)."""
    width = max(20, int(fig.get_figwidth() * 72 / 5.0))
    lines = [x if "$" in x else textwrap.fill(x, width, break_long_words=False) for x in text.split("\n")]
    fig.suptitle("\n".join(lines))


def _metric_label(metric: str) -> str:
    return f"{metric} (%)"


# ---------------------------------------------------------------------- P_up vs P_comp
_SCATTER_SINGLE_MAX = 12
"""Most labelled points a single-column P-scatter holds legibly; more get a double-column figure."""


def p_scatter(lb: pd.DataFrame, benchmark: str, eval_sets: Sequence[str]) -> Any:
    """P_up (y) against P_comp (x), one marker per row with 95 % CI bars in both directions, direct labels
    placed without overlap, dotted parity lines at 50 (0–100 scores). Single column, 3.3 × 3.6 in; double
    column, 7.0 × 5.0 in, above :data:`_SCATTER_SINGLE_MAX` points (labels need the room)."""
    from matplotlib.lines import Line2D

    pts = lb[(lb["role"] != "reference") & lb["P_up"].notna() & lb["P_comp"].notna()] if len(lb) else lb
    wide = len(pts) > _SCATTER_SINGLE_MAX
    fig = _figure(DOUBLE_COLUMN_IN, 5.0) if wide else _figure(SINGLE_COLUMN_IN, 3.6)
    ax = fig.add_subplot()
    xy = pts[["P_comp", "P_up"]].to_numpy(dtype=float).reshape(-1, 2)  # [N, 2] (P_comp, P_up), 0–100
    xe = np.array([_half(r, "P_comp") for _, r in pts.iterrows()])
    ye = np.array([_half(r, "P_up") for _, r in pts.iterrows()])
    for (_, r), (x, y), a, b in zip(pts.iterrows(), xy, xe, ye, strict=True):
        st = method_style(r["key"])
        bars = ax.errorbar(
            x,
            y,
            xerr=None if math.isnan(a) else a,
            yerr=None if math.isnan(b) else b,
            fmt=st.marker,
            color=st.color,
            mfc=st.face,
            mec=st.color,
            ms=5,
            elinewidth=0.8,
            zorder=3,
        )
        bars.lines[0].set_gid(r["key"])
    ax.axhline(50, **_REF_LINE, zorder=1)
    ax.axvline(50, **_REF_LINE, zorder=1)
    ax.margins(0.12)
    ax.set_xlabel(r"$P_\mathrm{comp}$ (0–100; 50: cross on par with old→old)")
    ax.set_ylabel(r"$P_\mathrm{up}$ (0–100; 50: self on par with φ*)")
    _title(
        fig, f"{benchmark}\n" + r"$P_\mathrm{up}$ vs $P_\mathrm{comp}$ over " + (", ".join(eval_sets) or "–")
    )
    handles = [
        Line2D(
            [],
            [],
            color="0.3",
            marker="|",
            ms=6,
            lw=0.8,
            label=_ci_text(lb, [*pts.get("P_up n", []), *pts.get("P_comp n", [])]),
        ),
        Line2D([], [], **_REF_LINE, label="50: on par (old→old for x, φ* for y)"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=1, frameon=False)
    if pts.empty:
        ax.text(
            0.5,
            0.5,
            "no P-metrics (needs independent runs)",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
    fig.canvas.draw()  # final layout and limits, then freeze them so the label boxes stay where measured
    fig.set_layout_engine("none")
    if len(xy):
        segs = np.concatenate(
            [
                np.stack([xy[:, 0] - np.nan_to_num(xe), xy[:, 1], xy[:, 0] + np.nan_to_num(xe), xy[:, 1]], 1),
                np.stack([xy[:, 0], xy[:, 1] - np.nan_to_num(ye), xy[:, 0], xy[:, 1] + np.nan_to_num(ye)], 1),
            ]
        )
        from bctbench.leaderboard.labels import place_labels

        place_labels(ax, xy, [str(m) for m in pts["method"]], segments=segs, marker_pt=6)
    return fig


# ---------------------------------------------------------------------- self / cross per eval set
def self_cross(lb: pd.DataFrame, benchmark: str, es: str, protocol: str, metric: str) -> Any:
    """Dot plot of one eval set: per row (leaderboard order, top to bottom) self (new→new, filled marker) and
    cross (new→old, hollow marker) mean ×100 with 95 % CI bars; old→old as the black dashed line in its grey
    CI band. Single column, 3.3 in wide, 0.22 in per row (at least four)."""
    from matplotlib.lines import Line2D

    rows = lb[lb["role"] != "reference"]
    fig = _figure(SINGLE_COLUMN_IN, 2.1 + 0.22 * max(len(rows), 4))
    ax = fig.add_subplot()
    y = np.arange(len(rows), dtype=float)
    ns: list[Any] = []
    for pair, dy, hollow in ((SELF, -0.17, False), (CROSS, 0.17, True)):
        col = value_column(es, protocol, metric, pair)
        ns += list(rows[f"{col} n"])
        for yi, (_, r) in zip(y, rows.iterrows(), strict=True):
            st = method_style(r["key"])
            half = _half(r, col)
            bars = ax.errorbar(
                float(r[col]) * 100,
                yi + dy,
                xerr=None if math.isnan(half) else half * 100,
                fmt=st.marker,
                color=st.color,
                mfc="white" if hollow else st.color,  # "(yours)" rows are told by their tick label here
                mec=st.color,
                ms=4.5,
                elinewidth=0.8,
                zorder=3,
            )
            bars.lines[0].set_gid(r["key"])
    old = lb[lb["role"] == "reference"]
    ref_col = value_column(es, protocol, metric, SELF)
    handles = [
        Line2D([], [], color="0.2", marker="o", ls="none", ms=4.5, label="self (new→new)"),
        Line2D([], [], color="0.2", marker="o", mfc="white", ls="none", ms=4.5, label="cross (new→old)"),
    ]
    if len(old) and _finite(old[ref_col].iloc[0]):
        r = old.iloc[0]
        ax.axvline(float(r[ref_col]) * 100, **REFERENCE_STYLE, zorder=2)
        half = _half(r, ref_col)
        band = not math.isnan(half) and half > 0
        if band:
            ax.axvspan((r[ref_col] - half) * 100, (r[ref_col] + half) * 100, color="0.88", lw=0, zorder=0)
        handles.append(
            Line2D([], [], **REFERENCE_STYLE, label="old→old" + (" (grey band: its CI)" if band else ""))
        )
        ns.append(r[f"{ref_col} n"])
    handles.append(Line2D([], [], color="0.3", marker="|", ms=6, lw=0.8, label=_ci_text(lb, ns)))
    ax.set_yticks(y, [str(m) for m in rows["method"]])
    ax.set_ylim(len(rows) - 0.5, -0.5)  # first row on top
    ax.grid(axis="x", color="0.92", lw=0.5, zorder=0)
    ax.set_xlabel(_metric_label(metric))
    _title(fig, f"{benchmark}\nself and cross on {es} ({protocol})")
    fig.legend(handles=handles, loc="outside lower center", frameon=False)
    return fig


# ---------------------------------------------------------------------- backfilling curves
def curve_stats(points: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Mean backfilling curve of one method with its 95 % t interval over seeds.

    ``points``: ``kind == "backfill"`` rows of one method, mode and order (``seed``, ``order_seed``,
    ``fraction``, ``value`` as fractions). Each seed's curve is first averaged over its order seeds. Returns
    ``(fractions[F], mean[F], half[F], n)`` ×100 (%), ``half`` the CI half-width (NaN with one seed), ``n``
    the number of seeds."""
    from scipy import stats

    per_seed = points.groupby(["seed", "fraction"], sort=True)["value"].mean().unstack("fraction")  # [S, F]
    vals = per_seed.to_numpy(dtype=float) * 100
    n = np.sum(np.isfinite(vals), axis=0)  # [F]
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a fraction without values: NaN, not a warning
        mean = np.nanmean(vals, axis=0)
        sd = np.nanstd(vals, axis=0, ddof=1) if vals.shape[0] > 1 else np.full(vals.shape[1], np.nan)
        t = stats.t.ppf(0.5 + LEVEL / 2, np.maximum(n - 1, 1))
        half = np.where(n > 1, t * sd / np.sqrt(np.maximum(n, 1)), np.nan)
    return per_seed.columns.to_numpy(dtype=float) * 100, mean, half, int(vals.shape[0])


def _draw_curve(
    ax: Any,
    points: pd.DataFrame,
    key: str,
    label: str,
    *,
    ls: str = "-",
    baseline: bool = False,
    band_alpha: float = 0.15,
) -> tuple[Any, float, int]:
    """One method's mean curve in its fixed style with its CI band (a ``baseline``: no markers, dashed, or
    dotted for a ``(yours)`` row). Returns ``(line, last mean, seeds)``."""
    st = method_style(key)
    x, mean, half, n = curve_stats(points)
    (line,) = ax.plot(
        x,
        mean,
        ls=(":" if st.hollow else "--") if baseline else ls,  # a "(yours)" baseline dotted
        color=st.color,
        marker="none" if baseline else st.marker,
        mfc=st.face,
        mec=st.color,
        ms=3.5,
        lw=1.0 if baseline else 1.1,
        label=label,
        zorder=3,
    )
    if np.isfinite(half).any():
        ax.fill_between(x, mean - half, mean + half, color=st.color, alpha=band_alpha, lw=0, zorder=2)
    return line, float(mean[-1]) if len(mean) else math.nan, n


def _curve_figure(
    width: float,
    height: float,
    title: str,
    metric: str,
    ref: pd.Series,
    draw: Any,
    loc: str,
    ncols: int = 1,
) -> Any:
    """A backfilling figure: ``draw(ax)`` returns the curves as ``[(line, last mean, seeds)]``; adds the
    old→old line, axes in %, the title and a legend ``loc`` ``"right"`` or ``"below"`` (``ncols`` columns;
    curves ordered by their value at 100 %, then old→old and what the bands are)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    fig = _figure(width, height)
    ax = fig.add_subplot()
    drawn = draw(ax)
    handles = [h for h, _, _ in sorted(drawn, key=lambda d: -d[1] if math.isfinite(d[1]) else math.inf)]
    if len(ref) and _finite(ref.iloc[0]):
        ax.axhline(float(ref.iloc[0]) * 100, **REFERENCE_STYLE, zorder=1)
        handles.append(Line2D([], [], **REFERENCE_STYLE, label=REFERENCE))
    band = f"bands: {LEVEL * 100:.0f} % CI over {_n_text(n for _, _, n in drawn)}\n(seed t interval)"
    handles.append(Patch(color="0.5", alpha=0.3, lw=0, label=band))
    ax.set_xlabel("fraction of gallery backfilled (%)")
    ax.set_ylabel(_metric_label(metric))
    ax.set_xlim(-3, 103)
    ax.grid(color="0.92", lw=0.5, zorder=0)
    _title(fig, title)
    if loc == "right":  # an axes legend: the layout keeps it clear of the title
        ax.legend(
            handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, frameon=False
        )
    else:
        fig.legend(handles=handles, loc="outside lower center", ncols=ncols, frameon=False)
    return fig


_LEGEND_RIGHT_MAX = 14
"""Most curves a right-hand legend beside a 3.4 in high axes holds; more go below in columns."""


def curves_all(
    curves: pd.DataFrame, ref: pd.Series, title: str, metric: str, spec: Sequence[tuple[str, str, str]]
) -> Any:
    """Random-order backfilling curves of several methods: double column (7 × 3.4 in) with the legend on the
    right, or single column (3.3 × 3.6 in) with the legend below for up to four curves; above
    :data:`_LEGEND_RIGHT_MAX` curves double column with a three-column legend below (the figure grows 0.19 in
    per legend row).

    ``curves``: ``kind == "backfill"`` rows of one eval set at its primary protocol and metric; ``spec``:
    ``[(key, mode, legend label)]``, each method's curve in that mode (merge dashed when modes mix)."""
    alpha = 0.15 if len(spec) <= 4 else 0.07  # many overlapping bands: lighter
    mixed_modes = len({m for _, m, _ in spec}) > 1

    def draw(ax: Any) -> list[tuple[Any, float, int]]:
        random = curves[curves["order"] == AUC_ORDER]
        return [
            _draw_curve(
                ax,
                random[(random["method"] == k) & (random["mode"] == m)],
                k,
                label,
                ls="--" if mixed_modes and m == "merge" else "-",
                band_alpha=alpha,
            )
            for k, m, label in spec
        ]

    if len(spec) <= 4:  # a few curves: single column, legend below
        return _curve_figure(SINGLE_COLUMN_IN, 3.6, title, metric, ref, draw, "below")
    if len(spec) > _LEGEND_RIGHT_MAX:  # the legend would outgrow the axes' height
        rows = math.ceil((len(spec) + 2) / 3)  # curves + old→old + the band note
        return _curve_figure(DOUBLE_COLUMN_IN, 3.4 + 0.19 * rows, title, metric, ref, draw, "below", ncols=3)
    return _curve_figure(DOUBLE_COLUMN_IN, 3.4, title, metric, ref, draw, "right")


def curves_order(curves: pd.DataFrame, ref: pd.Series, title: str, metric: str, mode: str, order: str) -> Any:
    """Each method with ``order`` curves in ``mode`` (e.g. Hot-refresh's uncertainty order): that order
    (solid, markers) beside its own random-order baseline (dashed, same colour). Single column, legend
    below."""

    def draw(ax: Any) -> list[tuple[Any, float, int]]:
        mine = curves[curves["mode"] == mode]
        out = []
        for key in sorted(set(mine.loc[mine["order"] == order, "method"])):
            m = mine[mine["method"] == key]
            out.append(_draw_curve(ax, m[m["order"] == order], key, f"{key}: {order} order"))
            base = m[m["order"] == AUC_ORDER]
            if len(base):
                out.append(_draw_curve(ax, base, key, f"{key}: {AUC_ORDER} order (baseline)", baseline=True))
        return out

    return _curve_figure(SINGLE_COLUMN_IN, 3.6, title, metric, ref, draw, "below")


# ---------------------------------------------------------------------- all figures
def leaderboard_figures(
    df: pd.DataFrame, lb: pd.DataFrame, curve_methods: Iterable[str] | None = None
) -> list[tuple[str, Any]]:
    """Build every figure of a leaderboard: ``[(file stem, matplotlib Figure)]`` (Agg canvases, no pyplot).

    ``df``: :func:`~bctbench.leaderboard.table.results_frame`; ``lb``: its
    :func:`~bctbench.leaderboard.table.leaderboard`. Stems (``<es>``: each eval set present, at its primary
    protocol and metric):

    * ``p_up_vs_p_comp``: P_up vs P_comp per row (the P-metrics pool every eval set);
    * ``self_cross_<es>``: self and cross mAP (%) per row with the old→old line;
    * ``backfill_<es>_<mode>_random``: every method's random-order curve in ``mode``;
    * ``backfill_<es>_<mode>_<order>`` for any other order (e.g. Hot-refresh's ``uncertainty``): the methods
      with that order, each beside its own random-order baseline;
    * ``backfill_<es>_headline``: each method in its own backfilling mode (``mixed`` for BCT methods,
      ``merge`` for ``independent`` = training-free distance rank merge and for online backfilling), random
      order; with ``curve_methods`` also ``backfill_<es>_headline_selected`` with those methods only.

    Raises :class:`~bctbench.errors.ConfigError` when a ``curve_methods`` entry has no random-order curves.
    """
    import matplotlib

    benchmark = _benchmark(df, lb)
    eval_sets = _eval_sets(df)
    unknown = sorted(set(curve_methods or ()) - set(_headline_modes(df)))
    if unknown:
        raise ConfigError(f"--curve-methods: no {AUC_ORDER}-order curves for {', '.join(unknown)}")
    out: list[tuple[str, Any]] = []
    with matplotlib.rc_context(RC):
        out.append(("p_up_vs_p_comp", p_scatter(lb, benchmark, [es for es, _, _ in eval_sets])))
        for es, p, met in eval_sets:
            out.append((f"self_cross_{_safe(es)}", self_cross(lb, benchmark, es, p, met)))
        for es, p, met in eval_sets:
            curves = df[
                (df["kind"] == "backfill")
                & (df["eval_set"] == es)
                & (df["protocol"] == p)
                & (df["metric"] == met)
            ]
            ref = lb.loc[lb["role"] == "reference", value_column(es, p, met, SELF)]
            pairs = sorted({(str(a), str(b)) for a, b in zip(curves["mode"], curves["order"], strict=True)})
            for mode, order in pairs:
                stem = f"backfill_{_safe(es)}_{_safe(mode)}_{_safe(order)}"
                head = f"{benchmark}: {es} ({p})\n{mode} backfilling, "
                if order == AUC_ORDER:
                    keys = sorted(
                        set(curves.loc[(curves["mode"] == mode) & (curves["order"] == order), "method"])
                    )
                    fig = curves_all(curves, ref, head + f"{order} order", met, [(k, mode, k) for k in keys])
                else:
                    fig = curves_order(curves, ref, head + f"{order} vs {AUC_ORDER} order", met, mode, order)
                out.append((stem, fig))
            out += _headline(curves, ref, benchmark, es, p, met, curve_methods)
    return out


def _headline_modes(curves: pd.DataFrame) -> dict[str, str]:
    """``{method key: its own backfilling mode}`` of the rows that have random-order curves in that mode."""
    head = curves[(curves["kind"] == "backfill") & (curves["mode"] == curves["backfill_mode"])]
    head = head[head["order"] == AUC_ORDER]
    return dict(zip(head["method"], head["backfill_mode"], strict=True))


def _headline(curves, ref, benchmark, es, p, met, curve_methods) -> list[tuple[str, Any]]:
    """The headline curve figures of one eval set (see :func:`leaderboard_figures`)."""
    own = _headline_modes(curves)
    selections = [None] if curve_methods is None else [None, list(curve_methods)]
    out = []
    for selected in selections:
        keys = [k for k in selected if k in own] if selected is not None else sorted(own)
        if not keys:
            continue
        spec = [(k, own[k], f"{k} ({own[k]})") for k in keys]
        title = f"{benchmark}: {es} ({p})\neach method in its own mode, {AUC_ORDER} order"
        fig = curves_all(curves, ref, title, met, spec)
        out.append((f"backfill_{_safe(es)}_headline{'_selected' if selected is not None else ''}", fig))
    return out


def plot_leaderboard(
    df: pd.DataFrame,
    out_dir: str | os.PathLike,
    lb: pd.DataFrame | None = None,
    curve_methods: Iterable[str] | None = None,
) -> list[Path]:
    """Write every figure of :func:`leaderboard_figures` to ``out_dir`` as ``<stem>.pdf`` (vector, TrueType
    text) and ``<stem>.png`` (300 dpi); return the paths (PDF then PNG per figure)."""
    import matplotlib

    if lb is None:
        raise ValueError("plot_leaderboard needs the leaderboard frame `lb` (from leaderboard())")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    fonttools = logging.getLogger("fontTools")  # the PDF font subsetter logs every glyph at INFO
    level = fonttools.level
    fonttools.setLevel(logging.WARNING)
    try:
        with matplotlib.rc_context(RC):
            for stem, fig in leaderboard_figures(df, lb, curve_methods):
                for ext in FORMATS:
                    path = out / f"{stem}.{ext}"
                    fig.savefig(path, format=ext, metadata={"CreationDate": None} if ext == "pdf" else None)
                    paths.append(path)
    finally:
        fonttools.setLevel(level)
    return paths
