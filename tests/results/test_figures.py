"""Leaderboard figures a paper can use: fixed method styles, labels without overlap, titles, fonts, sizes, the
random baseline beside the uncertainty order, PDF + PNG."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bctbench.leaderboard import leaderboard, results_frame
from bctbench.leaderboard.labels import LABEL_GID
from bctbench.leaderboard.plots import leaderboard_figures, p_scatter
from bctbench.leaderboard.style import (
    METHOD_STYLES,
    MIN_DELTA_E,
    REFERENCE_COLOR,
    _srgb_to_lab,
    delta_e,
    derived_color,
    hex_to_rgb,
    method_style,
)
from bctbench.registry import builtin_method_names
from bctbench.results import RunResult, read_results
from tests.results.bct_results_fixtures import BENCH

# Machado et al. 2009 dichromacy simulation (severity 1), linear RGB
CVD = {
    "protanopia": np.array(
        [[0.152286, 1.052583, -0.204868], [0.114503, 0.786281, 0.099216], [-0.003882, -0.048116, 1.051998]]
    ),
    "deuteranopia": np.array(
        [[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413], [-0.011820, 0.042940, 0.968881]]
    ),
}


def _lab_under(colors: list[str], m: np.ndarray | None) -> np.ndarray:
    rgb = np.stack([hex_to_rgb(c) for c in colors])
    if m is not None:  # simulate in linear light, back to sRGB
        lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4) @ m.T
        lin = np.clip(lin, 0, 1)
        rgb = np.where(lin <= 0.0031308, 12.92 * lin, 1.055 * lin ** (1 / 2.4) - 0.055)
    return _srgb_to_lab(rgb)


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> list[RunResult]:
    from bctbench.results import write_result
    from tests.results.bct_results_fixtures import all_fixture_results

    root = tmp_path_factory.mktemp("results")
    for res in all_fixture_results():
        write_result(res, root)
    return read_results(root, BENCH)


@pytest.fixture(scope="module")
def lb(results) -> pd.DataFrame:
    return leaderboard(results)


@pytest.fixture(scope="module")
def figures(results, lb) -> dict:
    return dict(leaderboard_figures(results_frame(results), lb))


# ---------------------------------------------------------------------- style
def test_every_registered_method_has_a_fixed_distinct_style() -> None:
    names = builtin_method_names()
    assert len(names) >= 12 and set(names) <= set(METHOD_STYLES)
    styles = [method_style(n) for n in names]
    assert styles == [method_style(n) for n in names] == [METHOD_STYLES[n] for n in names]  # stable
    assert len({s.color for s in styles}) == len({s.marker for s in styles}) == len(names)
    colors = [s.color for s in styles] + [REFERENCE_COLOR]
    for a, b in itertools.combinations(colors, 2):
        assert delta_e(a, b) >= 20, (a, b)
    for name, m in CVD.items():  # still apart for the two common colour-vision deficiencies
        lab = _lab_under(colors, m)
        d = np.linalg.norm(lab[:, None] - lab[None], axis=-1)[np.triu_indices(len(colors), 1)]
        assert d.min() >= 10, name


def test_unknown_methods_get_a_deterministic_colour_clear_of_the_fixed_ones() -> None:
    fixed = [s.color for s in METHOD_STYLES.values()] + [REFERENCE_COLOR]
    for name in ("my_method", "third_party", "zzz", "bct2", "a", "plugin_with_a_long_name"):
        st = method_style(name)
        assert st == method_style(name) and st.color == derived_color(name)
        assert min(delta_e(st.color, c) for c in fixed) >= MIN_DELTA_E
    assert (
        method_style("bct (yours)").color == METHOD_STYLES["bct"].color and method_style("bct (yours)").hollow
    )
    variant = method_style("bct@1a2b3c4d")
    assert variant.color == METHOD_STYLES["bct"].color and variant.marker != METHOD_STYLES["bct"].marker


def test_methods_keep_their_colour_in_every_figure(figures) -> None:
    from matplotlib.colors import to_hex

    seen = 0
    for fig in figures.values():
        for line in fig.axes[0].get_lines():  # curves by legend label, markers by gid
            label = line.get_gid() or str(line.get_label()).split(" ")[0].split(":")[0]
            if label in METHOD_STYLES:
                assert to_hex(line.get_color()).upper() == METHOD_STYLES[label].color
                seen += 1
    assert seen >= 20


# ---------------------------------------------------------------------- titles, fonts, sizes
def test_titles_name_benchmark_and_eval_set(figures) -> None:
    assert set(figures) >= {"self_cross_rsynth", "self_cross_gsynth", "p_up_vs_p_comp"}  # both eval sets
    for stem, fig in figures.items():
        title = fig.get_suptitle()
        assert BENCH in title, stem
        sets = (
            ["rsynth", "gsynth"]
            if stem == "p_up_vs_p_comp"
            else [stem.split("_")[-1 if "self" in stem else 1]]
        )
        assert all(es in title for es in sets), (stem, title)


def test_fonts_sizes_and_nothing_clipped(figures) -> None:
    from matplotlib.text import Text

    for stem, fig in figures.items():
        w, h = fig.get_size_inches()
        assert w in (3.3, 7.0) and 0.4 <= h / w <= 1.6, stem
        fig.canvas.draw()
        for t in fig.findobj(Text):
            if t.get_visible() and t.get_text().strip():
                assert t.get_fontsize() >= 8, (stem, t.get_text())
        drawn = fig.get_tightbbox(fig.canvas.get_renderer())  # inches, what is drawn
        assert drawn.x0 >= -0.01 and drawn.y0 >= -0.01 and drawn.x1 <= w + 0.01 and drawn.y1 <= h + 0.01, stem


def test_axes_in_percent_and_error_bars_explained(figures) -> None:
    sc = figures["self_cross_rsynth"]
    assert sc.axes[0].get_xlabel() == "mAP (%)"
    curve = figures["backfill_rsynth_headline"].axes[0]
    assert curve.get_xlabel() == "fraction of gallery backfilled (%)" and curve.get_ylabel() == "mAP (%)"
    for stem in ("self_cross_rsynth", "p_up_vs_p_comp", "backfill_rsynth_headline"):
        fig = figures[stem]
        texts = [
            t.get_text()
            for leg in [*fig.legends, *(a.get_legend() for a in fig.axes)]
            if leg
            for t in leg.get_texts()
        ]
        note = next(t for t in texts if "95 % CI" in t)
        assert "n = " in note and "seeds" in note, stem
    p_note = next(
        t.get_text() for t in figures["p_up_vs_p_comp"].legends[0].get_texts() if "CI" in t.get_text()
    )
    assert "landmark bootstrap" in p_note and "n = 1–3 seeds" in p_note  # fixture: 1 to 3 seeds per row


# ---------------------------------------------------------------------- labels
def _crowded(lb: pd.DataFrame) -> pd.DataFrame:
    """Every registered method within 1 point of the same (P_comp, P_up); online_backfill 0.01 from l2."""
    base = lb.set_index("key").loc["bct"]
    names = sorted(METHOD_STYLES)
    shift = {n: (0.3 * (i % 4), 0.3 * (i // 4)) for i, n in enumerate(names)}
    shift["online_backfill"] = (shift["l2"][0] + 0.01, shift["l2"][1])
    rows = []
    for name in names:
        r = base.copy()
        r["key"] = r["method"] = name
        for col, d in zip(("P_comp", "P_up"), shift[name], strict=True):
            r[[col, f"{col} lo", f"{col} hi"]] += d
        rows.append(r)
    out = pd.DataFrame(rows).reset_index(drop=True)
    out.attrs.update(lb.attrs)
    return out


def test_scatter_labels_never_overlap(lb: pd.DataFrame) -> None:
    from matplotlib.text import Text

    crowded = _crowded(lb)
    fig = p_scatter(crowded, BENCH, ["rsynth", "gsynth"])
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    labels = [t for t in fig.axes[0].texts if t.get_gid() == LABEL_GID]
    assert sorted(t.get_text() for t in labels) == sorted(crowded["method"])
    boxes = [Text.get_window_extent(t, renderer) for t in labels]
    for (a, ta), (b, tb) in itertools.combinations(zip(boxes, labels, strict=True), 2):
        inter_w = min(a.x1, b.x1) - max(a.x0, b.x0)
        inter_h = min(a.y1, b.y1) - max(a.y0, b.y0)
        assert inter_w <= 0 or inter_h <= 0, (ta.get_text(), tb.get_text())
    frame = fig.axes[0].get_window_extent(renderer)
    assert all(frame.x0 <= b.x0 and b.x1 <= frame.x1 and frame.y0 <= b.y0 and b.y1 <= frame.y1 for b in boxes)


def test_a_board_sized_scatter_goes_double_column_and_keeps_every_label_inside(lb: pd.DataFrame) -> None:
    """27 rows as on a reference board, a third of them piled at the left edge: no label may leave the axes
    (the fallback for a label with no free place once pushed one past the frame)."""
    from matplotlib.text import Text

    base = lb.set_index("key").loc["bct"]
    rows = []
    for i in range(27):
        r = base.copy()
        r["key"] = r["method"] = f"{sorted(METHOD_STYLES)[i % 12]}:preset{i}"
        dx, dy = (0.05 * i, 0.05 * i) if i < 9 else (2.0 * i, 1.5 * (i % 7))
        for col, d in (("P_comp", dx), ("P_up", dy)):
            r[[col, f"{col} lo", f"{col} hi"]] += d
        rows.append(r)
    board = pd.DataFrame(rows).reset_index(drop=True)
    board.attrs.update(lb.attrs)
    fig = p_scatter(board, BENCH, ["rsynth", "gsynth"])
    assert tuple(fig.get_size_inches()) == (7.0, 5.0)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    labels = [t for t in fig.axes[0].texts if t.get_gid() == LABEL_GID]
    assert len(labels) == 27
    frame = fig.axes[0].get_window_extent(renderer)
    for t in labels:
        b = Text.get_window_extent(t, renderer)
        assert frame.x0 <= b.x0 and b.x1 <= frame.x1 and frame.y0 <= b.y0 and b.y1 <= frame.y1, t.get_text()


def test_fixture_scatter_labels_sit_next_to_their_points(figures) -> None:
    from matplotlib.text import Text

    fig = figures["p_up_vs_p_comp"]
    fig.canvas.draw()
    ax = fig.axes[0]
    labels = [t for t in ax.texts if t.get_gid() == LABEL_GID]
    assert sorted(t.get_text() for t in labels) == ["advbct", "bct", "l2"]
    for t in labels:  # within ~1 inch of the point it names
        box = Text.get_window_extent(t, fig.canvas.get_renderer())
        point = ax.transData.transform(t.get_position())
        assert np.hypot(*(np.array([box.x0 + box.x1, box.y0 + box.y1]) / 2 - point)) < fig.dpi


# ---------------------------------------------------------------------- backfilling
def test_uncertainty_order_is_shown_beside_its_random_baseline(results, figures) -> None:
    fig = figures["backfill_rsynth_mixed_uncertainty"]
    lines = {str(line.get_label()): line for line in fig.axes[0].get_lines()}
    assert {"bct: uncertainty order", "bct: random order (baseline)"} <= set(lines)
    frame = results_frame(results)
    rand = frame[(frame["kind"] == "backfill") & (frame["method"] == "bct") & (frame["order"] == "random")]
    rand = rand[(rand["mode"] == "mixed") & (rand["eval_set"] == "rsynth")]
    per_seed = rand.groupby(["seed", "fraction"])["value"].mean().groupby("fraction").mean() * 100
    np.testing.assert_allclose(lines["bct: random order (baseline)"].get_ydata(), per_seed.to_numpy())
    assert lines["bct: random order (baseline)"].get_color() == lines["bct: uncertainty order"].get_color()


def test_many_curves_put_the_legend_below_in_columns_and_nothing_collapses(results) -> None:
    """A reference board draws ~27 random-order curves: a right-hand legend outgrew the figure and matplotlib
    gave up the layout (axes squeezed to a strip)."""
    import warnings

    from matplotlib.text import Text

    from bctbench.leaderboard.plots import curves_all

    frame = results_frame(results)
    one = frame[(frame["kind"] == "backfill") & (frame["eval_set"] == "rsynth") & (frame["method"] == "bct")]
    one = one[one["mode"] == "mixed"]
    keys = [f"{sorted(METHOD_STYLES)[i % 12]}:p{i}" for i in range(27)]  # board-length names
    curves = pd.concat([one.assign(method=k) for k in keys], ignore_index=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "constrained_layout not applied" is a UserWarning
        fig = curves_all(curves, pd.Series([0.3]), "many", "mAP", [(k, "mixed", k) for k in keys])
        fig.canvas.draw()
    assert fig.get_size_inches()[0] == 7.0 and not fig.axes[0].get_legend()
    (legend,) = fig.legends
    assert legend._ncols == 3 and sum(bool(t.get_text()) for t in legend.get_texts()) == 27 + 2
    ax = fig.axes[0].get_window_extent(fig.canvas.get_renderer())
    assert ax.height > 0.4 * fig.dpi * fig.get_size_inches()[1]  # the axes keep most of the height
    drawn = fig.get_tightbbox(fig.canvas.get_renderer())
    w, h = fig.get_size_inches()
    assert drawn.x0 >= -0.01 and drawn.y0 >= -0.01 and drawn.x1 <= w + 0.01 and drawn.y1 <= h + 0.01
    assert all(t.get_fontsize() >= 8 for t in fig.findobj(Text) if t.get_text().strip())


def test_every_figure_is_saved_as_pdf_and_png(results, lb, tmp_path: Path) -> None:
    from bctbench.leaderboard import plot_leaderboard

    paths = plot_leaderboard(results_frame(results), tmp_path, lb)
    stems = {p.stem for p in paths}
    assert len(stems) == 7
    for stem in stems:
        assert (tmp_path / f"{stem}.pdf").read_bytes().startswith(b"%PDF-")
        assert (tmp_path / f"{stem}.png").read_bytes().startswith(b"\x89PNG")
