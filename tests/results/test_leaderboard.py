"""Leaderboard from fixture results: golden markdown, intervals, verdicts, tiers, CSV, LaTeX, plots, render."""

from __future__ import annotations

import io
import math
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bctbench.errors import BCTBenchError, ConfigError
from bctbench.evaluation.metrics import compatibility_scores
from bctbench.leaderboard import (
    leaderboard,
    plot_leaderboard,
    render,
    results_frame,
    to_csv,
    to_latex,
    to_markdown,
)
from bctbench.results import RunResult, read_results
from bctbench.statistics import combined_interval
from tests.results.bct_results_fixtures import BENCH

GOLDEN = Path(__file__).with_name("golden_leaderboard.md")
RS = "rsynth medium mAP"


@pytest.fixture
def results(results_root: Path) -> list[RunResult]:
    return read_results(results_root, BENCH)


@pytest.fixture
def lb(results: list[RunResult]) -> pd.DataFrame:
    return leaderboard(results)


def test_golden_markdown(lb: pd.DataFrame) -> None:
    text = to_markdown(lb)
    if os.environ.get("BCTBENCH_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(text, encoding="utf-8")
    assert text == GOLDEN.read_text(encoding="utf-8")


def test_cells_are_means_with_intervals_of_both_error_sources(lb: pd.DataFrame) -> None:
    assert list(lb["key"][:2]) == ["old→old", "independent"]
    bct = lb.set_index("key").loc["bct"]
    col = f"{RS} new→old"
    assert bct[col] == pytest.approx(0.46)  # seeds 0.45, 0.46, 0.47
    assert bct[f"{col} n"] == 3 and bct[f"{col} seed_sd"] == pytest.approx(0.01)
    assert bct[f"{col} test_se"] > 0
    seed_only = combined_interval([0.45, 0.46, 0.47])
    assert bct[f"{col} lo"] < seed_only.low and bct[f"{col} hi"] > seed_only.high  # the test set widens it
    assert bct[f"{col} lo"] < bct[col] < bct[f"{col} hi"]
    ref = lb.set_index("key").loc["old→old"]
    assert ref[f"{RS} new→new"] == pytest.approx(0.404)  # old model k of seed k: 0.400, 0.404, 0.408
    assert ref[f"{RS} new→new n"] == 3


def test_p_metrics_are_per_seed_against_that_seeds_old_model(lb: pd.DataFrame, results) -> None:
    by = {(r.method, r.seed): r for r in results}
    sets = {"rsynth": ("medium", "mAP"), "gsynth": ("private", "mAP@100")}

    def v(m, s, es, q, g):
        return by[(m, s)].value(es, sets[es][0], q, g, sets[es][1])

    per_seed = [
        compatibility_scores(
            {es: v("bct", s, es, "new", "new") for es in sets},
            {es: v("bct", s, es, "new", "old") for es in sets},
            {es: v("bct", s, es, "old", "old") for es in sets},
            {es: v("independent", s, es, "new", "new") for es in sets},
        )["P_comp"]
        for s in range(3)
    ]
    assert lb.set_index("key").loc["bct", "P_comp"] == pytest.approx(np.mean(per_seed))
    ind = lb.set_index("key").loc["independent"]
    assert math.isnan(ind["P_up"]) and math.isnan(ind["P_1"]) and math.isfinite(ind["P_comp"])


def test_verdicts_tiers_and_bold_follow_paired_tests(lb: pd.DataFrame) -> None:
    rows = lb.set_index("key")
    for key in ("bct", "l2", "independent"):
        assert rows.loc[key, "rsynth cross>old"] in ("✓", "≈", "✗")
    assert rows.loc["bct", "rsynth cross>old"] == "✓"  # +5.6 points on every seed, small test-set noise
    assert rows.loc["independent", "rsynth cross>old"] == "✗"
    assert rows.loc["advbct", "rsynth cross>old"] == "≈"  # one seed: no verdict either way
    assert rows.loc["advbct", "tier"] == 1 or math.isnan(rows.loc["advbct", "P_1"])
    tiers = rows.loc[rows["role"] == "method", "tier"].dropna()
    assert set(tiers) <= {1, 2, 3} and 1 in set(tiers)
    assert not rows["best"].any() or rows["best"].sum() == 1
    p1 = lb.loc[lb.role == "method"].dropna(subset=["tier"])
    assert list(p1["tier"]) == sorted(p1["tier"])  # rows ordered by tier


def test_shuffled_test_set_makes_no_difference_significant(results: list[RunResult]) -> None:
    # the same numbers with a huge landmark effect: the bootstrap widens every interval
    noisy = []
    for r in results:
        pq = {}
        for es, d in r.per_query.items():
            groups = np.asarray(d["groups"])
            shift = 0.5 * np.where(groups % 2 == 0, 1.0, -1.0)
            scores = {}
            for pair, vals in d["scores"].items():
                x = np.array([np.nan if a is None else a for a in vals]) + shift
                scores[pair] = [None if np.isnan(a) else float(a) for a in x]
            pq[es] = {**d, "scores": scores}
        noisy.append(RunResult(**{**r.to_dict(), "per_query": pq, "schema_version": r.schema_version}))
    wide = leaderboard(noisy).set_index("key")
    narrow = leaderboard(results).set_index("key")
    col = f"{RS} new→old"
    assert wide.loc["bct", f"{col} hi"] - wide.loc["bct", f"{col} lo"] > (
        narrow.loc["bct", f"{col} hi"] - narrow.loc["bct", f"{col} lo"]
    )


def test_no_hard_coded_eval_sets(results: list[RunResult]) -> None:
    renamed = []
    for r in results:
        d = r.to_dict()
        d["metrics"] = [
            {**m, "eval_set": "zzz" if m["eval_set"] == "rsynth" else m["eval_set"]} for m in d["metrics"]
        ]
        d["primary"] = {("zzz" if k == "rsynth" else k): v for k, v in d["primary"].items()}
        d["per_query"] = {("zzz" if k == "rsynth" else k): v for k, v in d["per_query"].items()}
        renamed.append(RunResult.from_dict(d))
    assert "zzz medium mAP new→old" in leaderboard(renamed).columns


def test_csv(lb: pd.DataFrame) -> None:
    back = pd.read_csv(io.StringIO(to_csv(lb)))
    assert list(back.columns) == list(lb.columns)
    for suffix in ("", " lo", " hi", " seed_sd", " test_se"):
        assert back[f"{RS} new→new{suffix}"].tolist() == pytest.approx(
            lb[f"{RS} new→new{suffix}"].tolist(), nan_ok=True
        )


def _md_bold(md: str) -> set[str]:
    return {
        line.split(" | ")[0].removeprefix("| **").removesuffix("**")
        for line in md.splitlines()
        if "| **" in line
    }


def _tex_rows(tex: str) -> dict[str, str]:
    body = tex[tex.index(r"\midrule") : tex.index(r"\bottomrule")]
    return {line.split(" & ")[0]: line for line in body.splitlines() if " & " in line}


def test_latex_table_has_booktabs_caption_label_and_compiles_structurally(lb: pd.DataFrame) -> None:
    tex = to_latex(lb)
    assert tex.isascii()
    for token in (r"\begin{table}", r"\centering", r"\toprule", r"\midrule", r"\bottomrule", r"\end{table}"):
        assert token in tex
    assert tex.index(r"\caption{") < tex.index(r"\label{tab:synth_fixture}") < tex.index(r"\begin{tabular}")
    caption = tex[tex.index(r"\caption{") : tex.index(r"\label{")]
    for words in ("synth\\_fixture", "rsynth medium mAP", "gsynth private mAP@100", r"$\pm$", "95\\,\\% CI"):
        assert words in caption
    assert "landmark bootstrap" in caption and "in parentheses" in caption  # n differs between rows: per cell
    # balanced braces and environments; every row has as many cells as the column spec
    assert tex.count("{") - tex.count(r"\{") == tex.count("}") - tex.count(r"\}")
    for env in ("table", "tabular"):
        assert tex.count(rf"\begin{{{env}}}") == tex.count(rf"\end{{{env}}}") == 1
    ncols = len(tex.split(r"\begin{tabular}{", 1)[1].split("}", 1)[0])
    rows = [line for line in tex.splitlines() if line.endswith(r"\\")]
    multi = rows[0]  # group header: \multicolumn{k} spans k columns
    spans = sum(int(k) for k in re.findall(r"\\multicolumn\{(\d+)\}", multi))
    assert spans + multi.count(" & ") + 1 - len(re.findall(r"\\multicolumn", multi)) == ncols
    assert all(line.count(" & ") == ncols - 1 for line in rows[1:])
    lines = _tex_rows(tex)
    assert "46.00 $\\pm$ 5.02 (3)" in lines["bct"] and r"advbct\_compat" in lines["advbct"]
    assert r"\checkmark{}\,\checkmark{}" in lines["bct"]  # compat ✓✓


def test_latex_bolds_exactly_what_markdown_bolds(lb: pd.DataFrame) -> None:
    tex = to_latex(lb)
    bold = {k for k, line in _tex_rows(tex).items() if r"\textbf{" in line}
    assert bold == _md_bold(to_markdown(lb)) == set(lb.loc[lb["best"], "key"])
    assert "none is bold" in tex if not bold else "Bold:" in tex
    forced = lb.copy()
    forced["best"] = forced["key"] == "bct"
    tex = to_latex(forced)
    rows = _tex_rows(tex)
    assert r"\textbf{bct}" in tex and {k for k, v in rows.items() if r"\textbf" in v} == {r"\textbf{bct}"}
    assert _md_bold(to_markdown(forced)) == {"bct"}
    assert rows[r"\textbf{bct}"].count(r"\textbf") == 1  # the name only, never an overlapping mean
    assert "Bold: bct, significantly better" in tex


def test_latex_states_n_once_when_every_cell_shares_it(results: list[RunResult]) -> None:
    three = leaderboard([r for r in results if r.method in ("independent", "bct")])
    tex = to_latex(three)
    assert "$n = 3$ seeds" in tex and "(3)" not in tex and "in parentheses" not in tex


FIGURES = [
    "backfill_rsynth_headline",
    "backfill_rsynth_merge_random",
    "backfill_rsynth_mixed_random",
    "backfill_rsynth_mixed_uncertainty",
    "p_up_vs_p_comp",
    "self_cross_gsynth",
    "self_cross_rsynth",
]


def test_plots(results: list[RunResult], lb: pd.DataFrame, tmp_path: Path) -> None:
    paths = plot_leaderboard(results_frame(results), tmp_path / "plots", lb)
    assert sorted(p.name for p in paths) == sorted(f"{s}.{ext}" for s in FIGURES for ext in ("pdf", "png"))
    for p in paths:
        magic = b"%PDF-" if p.suffix == ".pdf" else b"\x89PNG\r\n\x1a\n"
        assert p.read_bytes().startswith(magic) and p.stat().st_size > 1000


def test_headline_backfill_curves_use_each_methods_own_mode(results, lb, tmp_path: Path) -> None:
    frame = results_frame(results)
    head = frame[(frame["kind"] == "backfill_auc") & (frame["mode"] == frame["backfill_mode"])]
    assert set(zip(head["method"], head["mode"], strict=True)) == {
        ("independent", "merge"),
        ("bct", "mixed"),
        ("l2", "mixed"),
        ("advbct", "mixed"),
    }
    paths = plot_leaderboard(frame, tmp_path / "plots", lb, curve_methods=["independent", "bct"])
    assert {"backfill_rsynth_headline_selected.png", "backfill_rsynth_headline_selected.pdf"} <= {
        p.name for p in paths
    }
    with pytest.raises(ConfigError, match="no random-order curves for nosuch"):
        plot_leaderboard(frame, tmp_path / "plots", lb, curve_methods=["bct", "nosuch"])


def test_render(results_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "lb.md"
    text = render(None, BENCH, fmt="md", out=out, plots_dir=tmp_path / "p", reference_root=results_root)
    golden = GOLDEN.read_text(encoding="utf-8")
    assert out.read_text() == text and text.startswith(golden)
    readings = text[len(golden) :]  # the board, then the readings (no preset rows, no spec: compute only)
    assert readings.startswith("\n### Compute\n") and "### Presets" not in readings
    assert sorted(p.stem for p in (tmp_path / "p").glob("*.png")) == FIGURES
    assert sorted(p.stem for p in (tmp_path / "p").glob("*.pdf")) == FIGURES
    assert render(results_root, BENCH, fmt="csv").startswith("method,key,name,origin,role,flags,seeds,")
    with pytest.raises(ConfigError, match="unknown leaderboard format 'html'"):
        render(results_root, BENCH, fmt="html")
    with pytest.raises(BCTBenchError, match="no readable, comparable results for benchmark 'nope'"):
        render(results_root, "nope")


def test_backfill_column_counts_monotone_curves(results: list[RunResult]) -> None:
    rows = leaderboard(results).set_index("key")
    assert rows.loc["independent", "backfill"] == "merge: monotone 3/3"
    assert rows.loc["bct", "backfill"] == "mixed: monotone 6/6"  # 3 seeds x 2 random orders
    dip = [RunResult.from_dict(r.to_dict()) for r in results]
    bct1 = next(r for r in dip if (r.method, r.seed) == ("bct", 1))
    curve = next(c for c in bct1.curves["backfill"] if c["order"] == "random" and c["order_seed"] == 0)
    curve["values"][2] = 0.0
    assert leaderboard(dip).set_index("key").loc["bct", "backfill"] == "mixed: monotone 5/6"


def test_nfr_column_is_the_seed_mean_of_the_cross_test_flip_rate(results: list[RunResult]) -> None:
    """The cross-test's negative flip rate: each seed's NFR at backfill fraction 0 (mixed mode, mean over
    order seeds), averaged over seeds; absent when the results carry no NFR."""
    assert not any(c.startswith("NFR ") for c in leaderboard(results).columns)
    flipped = [RunResult.from_dict(r.to_dict()) for r in results]
    want: dict[str, list[float]] = {}
    for r in flipped:
        per_seed = []
        for c in r.curves["backfill"]:
            nfr = [0.5] * len(c["fractions"])
            nfr[0] = 0.01 * (r.seed + 1) + (0.02 if c.get("order_seed") == 1 else 0.0)
            c["nfr"] = nfr
            if c["mode"] == "mixed":
                per_seed.append(nfr[0])
        if per_seed:
            want.setdefault(r.label, []).append(float(np.mean(per_seed)))
    lb = leaderboard(flipped).set_index("key")
    col = "NFR rsynth medium top-1"
    for label, values in want.items():
        assert lb.loc[label, col] == pytest.approx(np.mean(values))
        assert lb.loc[label, f"{col} n"] == len(values)
    assert "NFR: negative flip rate" in to_markdown(lb.reset_index())
