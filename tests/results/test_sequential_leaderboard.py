"""Sequential leaderboard from fixture results: golden markdown, per-seed AC / AA, CSV, render dispatch; the
single-step leaderboard is untouched by the sequential branch."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from bctbench.errors import ConfigError
from bctbench.evaluation.metrics import multi_step_metrics
from bctbench.evaluation.sequential import compatibility_matrices
from bctbench.leaderboard import (
    is_sequential,
    leaderboard,
    render,
    sequential_leaderboard,
    sequential_to_markdown,
    to_markdown,
)
from bctbench.results import RunResult, read_results, write_result
from tests.results.bct_results_fixtures import BENCH as SINGLE_BENCH

GOLDEN = Path(__file__).with_name("golden_sequential_leaderboard.md")
BENCH = "seq_fixture"
PRIMARY = {"rsynth": ["medium", "mAP"], "gsynth": ["private", "mAP@100"]}
# method -> lower-triangular rsynth matrix at seed 0 (gsynth = half of it); seed s adds 0.01 * s everywhere
MATRICES = {
    "bct": [[0.30], [0.33, 0.40], [0.31, 0.42, 0.50]],
    "independent": [[0.30], [0.05, 0.45], [0.04, 0.06, 0.55]],
}
SEEDS = {"bct": [0, 1], "independent": [0]}


def make_result(method: str, seed: int) -> RunResult:
    rows = []
    for es, scale in (("rsynth", 1.0), ("gsynth", 0.5)):
        protocol, metric = PRIMARY[es]
        for i, line in enumerate(MATRICES[method]):
            for j, v in enumerate(line):
                for p, bump in ((protocol, 0.0), ("easy" if es == "rsynth" else "public", 0.1)):
                    rows.append(
                        {
                            "eval_set": es,
                            "protocol": p,
                            "query_model": f"g{i}",
                            "gallery_model": f"g{j}",
                            "metric": metric,
                            "value": round(v * scale + 0.01 * seed + bump, 6),
                        }
                    )
    return RunResult(
        benchmark=BENCH,
        method=method,
        seed=seed,
        metrics=rows,
        curves={"sequential": {"steps": 3, "generations": [], "matrices": compatibility_matrices(rows, 3)}},
        primary=PRIMARY,
        created_at="2025-01-01T00:00:00+00:00",
    )


@pytest.fixture
def seq_root(tmp_path: Path) -> Path:
    root = tmp_path / "results"
    for m, seeds in SEEDS.items():
        for s in seeds:
            write_result(make_result(m, s), root)
    return root


def test_golden_sequential_markdown(seq_root: Path) -> None:
    text = render(seq_root, BENCH, fmt="md")
    if os.environ.get("BCTBENCH_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(text, encoding="utf-8")
    assert text == GOLDEN.read_text(encoding="utf-8")


def test_values_are_per_seed_summaries_over_seeds(seq_root: Path) -> None:
    results = read_results(seq_root, BENCH)
    assert is_sequential(results)
    lb = sequential_leaderboard(results).set_index("method")
    assert list(lb.index) == ["bct", "independent"]  # AA of the first eval set, descending
    ac, aa = [], []
    for s in SEEDS["bct"]:
        m = np.full((3, 3), np.nan)
        for i, line in enumerate(MATRICES["bct"]):
            m[i, : len(line)] = np.array(line) + 0.01 * s
        ac.append(multi_step_metrics(m)["AC"])
        aa.append(multi_step_metrics(m)["AA"])
    bct = lb.loc["bct"]
    assert bct["rsynth AC"] == pytest.approx(np.mean(ac)) and bct["rsynth AC n"] == 2
    t = 12.706204736174707  # t(0.975, df=1): two seeds
    half = t * np.std(aa, ddof=1) / np.sqrt(2)
    assert bct["rsynth AA"] == pytest.approx(np.mean(aa))
    assert bct["rsynth AA hi"] - bct["rsynth AA"] == pytest.approx(half)
    assert bct["rsynth medium mAP g2→g0"] == pytest.approx(0.315)
    # by hand: g1->g0 0.33 > 0.30, g2->g0 0.31 > 0.30, g2->g1 0.42 > 0.40 -> AC = 1; independent: AC = 0
    assert bct["rsynth AC"] == pytest.approx(1.0) and lb.loc["independent", "gsynth AC"] == pytest.approx(0.0)
    assert lb.loc["independent", "seeds"] == 1 and np.isnan(lb.loc["independent", "rsynth AA hi"])


def test_csv_and_unsupported_format(seq_root: Path) -> None:
    csv = render(seq_root, BENCH, fmt="csv")
    assert csv.splitlines()[0].startswith("method,flags,seeds,steps,rsynth medium mAP g0→g0")
    with pytest.raises(ConfigError, match="not available for sequential"):
        render(seq_root, BENCH, fmt="latex")


def test_mixed_generation_counts_are_refused(seq_root: Path) -> None:
    results = read_results(seq_root, BENCH)
    results[0].curves["sequential"]["steps"] = 4
    with pytest.raises(ConfigError, match="one number of generations"):
        sequential_leaderboard(results)


def test_single_step_render_is_unchanged(results_root: Path) -> None:
    assert not is_sequential(read_results(results_root, SINGLE_BENCH))
    board = to_markdown(leaderboard(read_results(results_root, SINGLE_BENCH)))
    text = render(results_root, SINGLE_BENCH, fmt="md")
    assert text.startswith(board) and text[len(board) :].startswith("\n### Compute\n")  # then the readings
    assert sequential_to_markdown  # exported
