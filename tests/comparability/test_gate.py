"""The provenance gate: a cell averages only results that agree on spec, data, split, the seed's old model and
hyperparameters; anything else is shown apart with a one-line reason naming both files (or refused)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bctbench.comparability import gate
from bctbench.errors import ConfigError
from bctbench.leaderboard import leaderboard, render, to_markdown
from bctbench.results import RunResult, read_result, read_results, result_path, write_result
from tests.results.bct_results_fixtures import BENCH, all_fixture_results

COL = "rsynth medium mAP new→old"


def _write(root: Path, results: list[RunResult]) -> list[RunResult]:
    for r in results:
        write_result(r, root)
    return read_results(root, BENCH)


@pytest.fixture
def reference(tmp_path: Path) -> list[RunResult]:
    return _write(tmp_path / "ref", all_fixture_results())


def _tampered(results: list[RunResult], method: str, seed: int, **changes) -> list[RunResult]:
    out = []
    for r in results:
        d = r.to_dict()
        if (r.method, r.seed) == (method, seed):
            for key, value in changes.items():
                if key == "dataset_sha256":
                    d["eval_variants"] = {**d["eval_variants"], key: value}
                else:
                    d[key] = value
        out.append(RunResult.from_dict(d, source=r.source))
    return out


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("old_identity", "e" * 64),
        ("benchmark_sha256", "c" * 64),
        ("dataset_sha256", "a" * 64),
        ("split_sha256", "9" * 64),
    ],
)
def test_a_result_that_differs_is_shown_apart_not_averaged(reference, field, value) -> None:
    results = _tampered(reference, "bct", 1, **{field: value})
    report = gate(results)
    assert len(report.apart) == 1
    reason = report.apart[0]
    assert reason.startswith(str(Path(reference[0].source).parent.parent / "bct" / "seed1.json"))
    assert f"{field} {value[:12]} differs from " in reason and ".json" in reason.split("differs from ")[1]
    lb = leaderboard(report.entries, apart=report.apart).set_index("key")
    assert lb.loc["bct", f"{COL} n"] == 2  # seeds 0 and 2 only
    text = to_markdown(leaderboard(report.entries, apart=report.apart))
    assert "Shown apart, not averaged (1 results" in text and f"- {reason}" in text


def test_strict_refuses_with_one_line_naming_both_files(reference) -> None:
    results = _tampered(reference, "l2", 0, old_identity="e" * 64)
    with pytest.raises(ConfigError) as info:
        gate(results, strict=True)
    msg = str(info.value)
    assert "\n" not in msg and msg.count(".json") == 2 and "old_identity" in msg and "seed 0" in msg


def test_same_row_with_other_hyperparameters_is_apart(reference) -> None:
    results = _tampered(reference, "bct", 2, method_hparams={"lr": 0.5, "lambda": 1.0})
    report = gate(results)
    assert len(report.apart) == 1 and "method_hparams differ" in report.apart[0]


def test_variants_are_rows_of_their_own_and_never_overwrite(tmp_path: Path, reference) -> None:
    variant = [
        RunResult.from_dict({**r.to_dict(), "hparams_digest": "0123abcd", "method_hparams": {"lr": 0.02}})
        for r in reference
        if r.method == "bct"
    ]
    root = tmp_path / "ref"
    _write(root, variant)
    assert read_result(result_path(root, BENCH, "bct", 0)).method_hparams == {"lr": 0.01, "lambda": 1.0}
    assert result_path(root, BENCH, "bct", 0, "0123abcd").parent.name == "bct@0123abcd"
    lb = leaderboard(gate(read_results(root, BENCH)).entries).set_index("key")
    assert {"bct", "bct@0123abcd"} <= set(lb.index)
    assert lb.loc["bct@0123abcd", f"{COL} n"] == 3


def test_users_runs_sit_beside_the_reference_rows_marked(tmp_path: Path, reference) -> None:
    mine = [r for r in all_fixture_results() if (r.method, r.seed) in {("bct", 0), ("independent", 0)}]
    _write(tmp_path / "mine", mine)
    text = render(tmp_path / "mine", BENCH, reference_root=tmp_path / "ref")
    rows = [line.split(" | ")[0].strip("| ") for line in text.splitlines() if line.startswith("| ")]
    assert rows.index("bct (yours)") == rows.index("bct") + 1
    assert "independent (φ*) (yours)" in rows and "(yours): your runs" in text


def test_a_users_row_sits_beside_its_reference_row_even_when_it_scores_far_lower(
    tmp_path: Path, reference
) -> None:
    """Rows are ordered by their reference row's tier and P_1, so (yours) never drifts away from it (the sort
    once looked its anchor up in the list being sorted, which Python empties meanwhile)."""
    mine = []
    for r in all_fixture_results():
        if (r.method, r.seed) == ("bct", 0):
            d = r.to_dict()
            d["metrics"] = [
                {**m, "value": m["value"] * 0.05} if m["query_model"] == "new" else m for m in d["metrics"]
            ]
            d.pop("per_query", None)
            mine.append(RunResult.from_dict(d, source=r.source))
    _write(tmp_path / "mine", mine)
    text = render(tmp_path / "mine", BENCH, reference_root=tmp_path / "ref")
    rows = [line.split(" | ")[0].strip("| ") for line in text.splitlines() if line.startswith("| ")]
    assert rows.index("bct (yours)") == rows.index("bct") + 1
    from bctbench.leaderboard import load_board

    board = load_board(tmp_path / "mine", BENCH, tmp_path / "ref")
    lb = leaderboard(board.entries).set_index("key")
    others = lb[(lb["role"] == "method") & (lb["origin"] == "reference")]["P_1"]
    assert lb.loc["bct (yours)", "P_1"] < others.min()  # on its own score it would sort last


def test_a_users_run_with_another_old_model_is_apart(tmp_path: Path, reference) -> None:
    mine = _tampered(
        [r for r in all_fixture_results() if (r.method, r.seed) == ("bct", 0)],
        "bct",
        0,
        old_identity="7" * 64,
    )
    _write(tmp_path / "mine", mine)
    text = render(tmp_path / "mine", BENCH, reference_root=tmp_path / "ref")
    assert "bct (yours)" not in text and "old_identity 777777777777 differs from" in text
    with pytest.raises(ConfigError, match="not comparable: .*mine.*bct/seed0.json: old_identity"):
        render(tmp_path / "mine", BENCH, reference_root=tmp_path / "ref", strict=True)


def test_code_versions_on_the_board_are_listed(reference) -> None:
    results = _tampered(reference, "l2", 1, git={"sha": "1" * 40, "dirty": True})
    report = gate(results)
    assert report.code_versions == ["0000000000 (8 results)", "1111111111+dirty (1 results)"]
    text = to_markdown(leaderboard(report.entries, code_versions=report.code_versions))
    assert "Code versions on this board: 0000000000 (8 results), 1111111111+dirty (1 results)." in text
