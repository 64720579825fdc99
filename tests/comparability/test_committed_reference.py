"""The committed reference results pass the provenance gate, match the current specs and the pinned old
models, and the leaderboard rebuilds from them alone."""

from __future__ import annotations

import pytest

from bctbench import pipeline
from bctbench.config import load_benchmark
from bctbench.leaderboard import is_sequential, leaderboard, load_board, render, sequential_leaderboard
from bctbench.old_model import load_old_model
from bctbench.paths import REFERENCE_ROOT

BENCHES = sorted(p.name for p in REFERENCE_ROOT.iterdir() if p.is_dir()) if REFERENCE_ROOT.is_dir() else []


def test_there_are_reference_results() -> None:
    assert "synth_class30to100" in BENCHES


@pytest.mark.parametrize("name", BENCHES)
def test_reference_results_are_comparable_and_current(name: str) -> None:
    spec = load_benchmark(name)
    board = load_board(None, name, REFERENCE_ROOT, strict=True)  # raises on anything not comparable
    assert board.entries and len(board.code_versions) == 1 and "+dirty" not in board.code_versions[0]
    for e in board.entries:
        r = e.result
        assert r.benchmark_sha256 == spec.sha256, f"{r.source}: made with another version of the spec"
        assert r.old_identity == spec.old_model.pinned[r.seed]
        old = load_old_model(pipeline.pinned_old_model_path(spec, r.seed), r.old_identity)
        assert r.eval_variants["dataset_sha256"] == old.meta["dataset_sha256"]
        assert r.split_sha256 == old.meta["split_sha256"]
        assert r.per_query, f"{r.source}: no per-query scores"
    if is_sequential([e.result for e in board.entries]):  # AC / AA per method, over seeds
        seq = sequential_leaderboard(board.entries)
        cells = [c for c in seq.columns if c.endswith(" AA n") or c.endswith(" AC n")]
        assert cells and (seq[cells] >= 3).all().all()
        return
    lb = leaderboard(board.entries)
    cells = [c for c in lb.columns if c.endswith(" n") and "new→old" in c]
    assert cells and (lb.loc[lb["role"] != "reference", cells] >= 3).all().all()


@pytest.mark.parametrize("name", [b for b in BENCHES if (REFERENCE_ROOT / b / "leaderboard.md").is_file()])
def test_committed_board_is_rebuilt_from_the_results_alone(name: str) -> None:
    """results/reference/<benchmark>/leaderboard.md (benchmarks/reference_boards.sh) is what `bctbench
    leaderboard --results-root results/reference --no-reference` prints today: no cell hand-edited or stale."""
    committed = (REFERENCE_ROOT / name / "leaderboard.md").read_text(encoding="utf-8")
    assert render(REFERENCE_ROOT, name) == committed
