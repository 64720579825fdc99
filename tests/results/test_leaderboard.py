"""Leaderboard from fixture results: golden markdown, CSV, LaTeX, plots and the render entry point."""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import pandas as pd
import pytest

from bctbench.errors import BCTBenchError, ConfigError
from bctbench.leaderboard import (
    leaderboard,
    load_results,
    plot_leaderboard,
    render,
    to_csv,
    to_latex,
    to_markdown,
)
from tests.results.bct_results_fixtures import BENCH

GOLDEN = Path(__file__).with_name("golden_leaderboard.md")


@pytest.fixture
def frame(results_root: Path) -> pd.DataFrame:
    return load_results(results_root, BENCH)


def test_golden_markdown(frame: pd.DataFrame) -> None:
    text = to_markdown(leaderboard(frame))
    if os.environ.get("BCTBENCH_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(text, encoding="utf-8")
    assert text == GOLDEN.read_text(encoding="utf-8")


def test_rows_order_and_values(frame: pd.DataFrame) -> None:
    lb = leaderboard(frame)
    assert list(lb["key"][:2]) == ["old→old", "independent"]
    p1 = lb.loc[lb.role == "method", "P_1"].tolist()
    assert p1 == sorted(p1, reverse=True)
    bct = lb.set_index("key").loc["bct"]
    assert bct["rsynth medium mAP new→old"] == pytest.approx(0.46)  # seeds 0.45, 0.46, 0.47
    assert bct["rsynth medium mAP new→old std"] == pytest.approx(0.01)
    assert bct["rsynth medium mAP new→old n"] == 3
    assert bct["rsynth cross>old"] is True and bct["gsynth cross>old"] is True
    assert lb.set_index("key").loc["l2", "gsynth cross>old"] is False  # 0.19 / 0.185 < 0.20
    ind = lb.set_index("key").loc["independent"]
    assert math.isnan(ind["P_up"]) and math.isnan(ind["P_1"]) and math.isfinite(ind["P_comp"])
    assert lb.set_index("key").loc["advbct", "flags"] == "advbct_compat"
    ref = lb.set_index("key").loc["old→old"]
    assert ref["gsynth private mAP@100 new→new"] == pytest.approx(0.20)
    # AUC: per run mean over the two random orders, then over seeds; uncertainty order ignored
    auc = bct["AUC rsynth medium mAP mixed/random"]
    assert 0.46 < auc < 0.57 and bct["AUC rsynth medium mAP mixed/random n"] == 3


def test_no_hard_coded_eval_sets(frame: pd.DataFrame) -> None:
    renamed = frame.replace({"eval_set": {"rsynth": "zzz_set"}})
    lb = leaderboard(renamed)
    assert "zzz_set medium mAP new→old" in lb.columns


def test_csv(frame: pd.DataFrame) -> None:
    lb = leaderboard(frame)
    back = pd.read_csv(io.StringIO(to_csv(lb)))
    assert list(back.columns) == list(lb.columns)
    assert back["rsynth medium mAP new→new"].tolist() == pytest.approx(
        lb["rsynth medium mAP new→new"].tolist()
    )


def test_latex_bolds_best(frame: pd.DataFrame) -> None:
    lb = leaderboard(frame)
    tex = to_latex(lb)
    assert tex.startswith(r"\begin{tabular}") and r"\bottomrule" in tex
    lines = {line.split(" & ")[0]: line for line in tex.splitlines() if " & " in line}
    # advbct has the best rsynth cross-test (0.47) and is bold there; references are never bold
    assert r"\textbf{47.00 (1)}" in lines["advbct"]
    assert r"\textbf{" not in lines[r"old$\to$old"]
    assert r"$\pm$" in lines["bct"]
    assert r"advbct\_compat" in lines["advbct"]


def test_plots(frame: pd.DataFrame, tmp_path: Path) -> None:
    paths = plot_leaderboard(frame, tmp_path / "plots")
    names = sorted(p.name for p in paths)
    assert names == [
        "backfill_rsynth_headline.png",
        "backfill_rsynth_merge_random.png",
        "backfill_rsynth_mixed_random.png",
        "backfill_rsynth_mixed_uncertainty.png",
        "p_up_vs_p_comp.png",
        "self_cross.png",
    ]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 1000


def test_headline_backfill_curves_use_each_methods_own_mode(frame: pd.DataFrame, tmp_path: Path) -> None:
    head = frame[(frame["kind"] == "backfill_auc") & (frame["mode"] == frame["backfill_mode"])]
    assert set(zip(head["method"], head["mode"], strict=True)) == {
        ("independent", "merge"),
        ("bct", "mixed"),
        ("l2", "mixed"),
        ("advbct", "mixed"),
    }
    paths = plot_leaderboard(frame, tmp_path / "plots", curve_methods=["independent", "bct"])
    assert "backfill_rsynth_headline_selected.png" in {p.name for p in paths}
    with pytest.raises(ConfigError, match="no random-order curves for nosuch"):
        plot_leaderboard(frame, tmp_path / "plots", curve_methods=["bct", "nosuch"])


def test_render(results_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "lb.md"
    text = render(results_root, BENCH, fmt="md", out=out, plots_dir=tmp_path / "p")
    assert out.read_text() == text == GOLDEN.read_text(encoding="utf-8")
    assert len(list((tmp_path / "p").glob("*.png"))) == 6
    assert render(results_root, BENCH, fmt="csv").startswith("method,key,role,flags,seeds,")
    with pytest.raises(ConfigError, match="unknown leaderboard format 'html'"):
        render(results_root, BENCH, fmt="html")
    with pytest.raises(BCTBenchError, match="no readable results for benchmark 'nope'"):
        render(results_root, "nope")


def test_backfill_column_counts_monotone_curves(frame: pd.DataFrame) -> None:
    lb = leaderboard(frame).set_index("key")
    assert lb.loc["independent", "backfill"] == "merge: monotone 3/3"
    assert lb.loc["bct", "backfill"] == "mixed: monotone 6/6"  # 3 seeds x 2 random orders
    dip = frame.copy()
    point = dip.index[
        (dip["kind"] == "backfill")
        & (dip["method"] == "bct")
        & (dip["seed"] == 1)
        & (dip["order_seed"] == 0)
        & (dip["fraction"] == 0.5)
    ]
    dip.loc[point, "value"] = 0.0
    assert leaderboard(dip).set_index("key").loc["bct", "backfill"] == "mixed: monotone 5/6"
