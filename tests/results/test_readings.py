"""Readings under the board: presets against the defaults, the AdvBCT ordering, compute."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from bctbench.leaderboard import leaderboard
from bctbench.leaderboard.readings import compute_cost, paper_agreement, preset_changes, readings_markdown
from bctbench.published import ADVBCT_P1, ADVBCT_ROWS, advbct_block
from bctbench.results import RunResult
from bctbench.statistics import kendall_tau_b
from tests.results.bct_results_fixtures import all_fixture_results


def _shifted(r: RunResult, preset: str, delta: float) -> RunResult:
    """A copy of ``r`` as a preset run whose new→old and new→new values are ``delta`` higher."""
    d = RunResult.from_dict(r.to_dict())
    for row in d.metrics:
        if row["query_model"] == "new":
            row["value"] = row["value"] + delta
    for pq in d.per_query.values():
        for pair in ("new|old", "new|new"):
            pq["scores"][pair] = [None if v is None else v + delta for v in pq["scores"][pair]]
    return dataclasses.replace(d, preset=preset, method_hparams={**d.method_hparams, "lambda": 2.0})


@pytest.fixture
def board() -> tuple[list[RunResult], pd.DataFrame]:
    results = all_fixture_results()
    results += [_shifted(r, "tuned", 0.03) for r in results if r.method == "bct"]
    results += [_shifted(r, "worse", -0.03) for r in results if r.method == "bct" and r.preset is None]
    return results, leaderboard(results)


def test_a_preset_row_is_compared_with_its_default_row_paired_by_seed(board) -> None:
    _, lb = board
    table = preset_changes(lb).set_index("row")
    assert list(table.index) == ["bct:tuned", "bct:worse"]
    per_seed = lb.attrs["p1_per_seed"]
    for row, verdict in (("bct:tuned", "✓"), ("bct:worse", "✗")):
        diffs = [per_seed[row][s] - per_seed["bct"][s] for s in (0, 1, 2)]
        t = table.loc[row]
        assert t["ΔP_1"] == pytest.approx(np.mean(diffs))
        assert t["ΔP_1 low"] < t["ΔP_1"] < t["ΔP_1 high"]
        assert t["verdict"] == verdict and t["paired seeds"] == 3
        assert t["default P_1"] == pytest.approx(lb.set_index("key").loc["bct", "P_1"])
    assert preset_changes(leaderboard(all_fixture_results())).empty


def test_the_advbct_block_follows_the_allocation_and_backbones() -> None:
    def spec(allocation: str, old: str = "r18", new: str = "r18", steps: int = 1):
        return SimpleNamespace(
            data=SimpleNamespace(allocation=allocation),
            models=SimpleNamespace(old_backbone=old, new_backbone=new),
            sequential_steps=steps,
        )

    assert advbct_block(spec("class30to100")) == "extended-class"
    assert advbct_block(spec("data30to100")) == "extended-data"
    assert advbct_block(spec("data30to100", new="r50")) == "extended-backbone (data)"
    assert advbct_block(spec("class30to100", new="r50")) == "extended-backbone (class)"
    assert advbct_block(spec("openclass30to70")) is None
    assert advbct_block(spec("seq_class10to30to100", steps=3)) is None
    assert set(ADVBCT_ROWS) == set(ADVBCT_P1["extended-class"])


def test_paper_agreement_is_kendall_tau_of_the_suite_means_against_the_table() -> None:
    spec = SimpleNamespace(
        data=SimpleNamespace(allocation="class30to100"),
        models=SimpleNamespace(old_backbone="w16", new_backbone="w16"),
        sequential_steps=1,
    )
    rows = list(ADVBCT_ROWS.values())
    rng = np.random.default_rng(0)
    per_seed = {row: {s: 40 + i + rng.normal(0, 0.3) for s in range(3)} for i, row in enumerate(rows)}
    lb = pd.DataFrame({"key": rows, "P_1": [np.mean(list(v.values())) for v in per_seed.values()]})
    lb.attrs.update(p1_per_seed=per_seed, p1_boot_per_seed={})
    (title, agreement, detail), *rest = paper_agreement(lb, spec)
    assert rest == []  # no tuned rows on this board
    assert title == "extended-class: paper's variants and hyperparameters"
    published = ADVBCT_P1["extended-class"]
    methods = list(ADVBCT_ROWS)
    want = kendall_tau_b([lb["P_1"][i] for i in range(5)], [published[m] for m in methods])
    assert agreement.tau == pytest.approx(want)
    assert detail["bct"] == ("bct:old_classes", pytest.approx(lb["P_1"][0]), published["bct"])
    assert agreement.n_seeds == 3 and not agreement.with_test
    assert paper_agreement(lb, None) == []


def test_compute_counts_stage_timings_times_threads() -> None:
    results = all_fixture_results()[:3]
    results[0] = dataclasses.replace(results[0], env={**results[0].env, "torch_threads": 2})
    cost = compute_cost(results)
    # fixture timings: fit 1.5 s + test 0.5 s per run; the first ran on two threads
    assert cost["runs"] == 3
    assert cost["core_hours"] == pytest.approx((2.0 * 2 + 2.0 + 2.0) / 3600)
    assert cost["stage_hours"]["fit"] == pytest.approx(1.5 * 4 / 3600)
    assert cost["runs_per_core_hour"] == pytest.approx(3 / cost["core_hours"])
    assert math.isnan(compute_cost([])["runs_per_core_hour"])


def test_markdown_readings(board) -> None:
    results, lb = board
    text = readings_markdown(lb, results)
    assert "### Presets against the defaults" in text and "| bct | bct:tuned |" in text
    assert "### Compute" in text and f"{len(results)} runs" in text
    assert "AdvBCT" not in text  # no spec: no paper block


def test_your_runs_are_set_beside_the_reference_runs_of_the_same_seed(tmp_path) -> None:
    from bctbench.comparability import gate
    from bctbench.leaderboard.readings import your_runs
    from bctbench.results import read_results, write_result
    from tests.results.bct_results_fixtures import BENCH

    ref, mine = tmp_path / "ref", tmp_path / "mine"
    for r in all_fixture_results():
        write_result(r, ref)
    bct = [r for r in all_fixture_results() if r.method == "bct"]
    write_result(bct[0], mine)  # a faithful re-run of the first seed
    lower = _shifted(bct[1], None, -0.02)  # seed 1 re-run came out lower (same hyperparameters)
    write_result(dataclasses.replace(lower, method_hparams=bct[1].method_hparams), mine)
    entries = gate(read_results(ref, BENCH), read_results(mine, BENCH)).entries
    lb = leaderboard(entries)
    results = [e.result for e in entries]
    table = your_runs(lb, results).set_index("seed")
    assert list(table.index) == [bct[0].seed, bct[1].seed] and set(table["row"]) == {"bct (yours)"}
    assert table.loc[bct[0].seed, "ΔP_1"] == 0.0
    assert table.loc[bct[1].seed, "ΔP_1"] < 0
    assert table.loc[bct[0].seed, "old model"] == bct[0].old_identity[:12]
    text = readings_markdown(lb, results)
    assert "### Your runs against the reference runs of the same seed" in text
    assert f"| bct (yours) | {bct[0].seed} | {bct[0].old_identity[:12]} |" in text and "| +0.00 |" in text
    assert your_runs(leaderboard(all_fixture_results()), all_fixture_results()).empty
