"""W&B dashboards read back from offline run files: run naming/grouping, board summary, backfilling line plots,
artefacts, the old-model run, and the published leaderboard table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bctbench import tracking
from bctbench.comparability import YOURS, gate
from bctbench.leaderboard import leaderboard
from bctbench.leaderboard.dashboard import board_table, run_summary
from bctbench.leaderboard.render import publish
from bctbench.results import write_result
from tests.results.bct_results_fixtures import BENCH, all_fixture_results, make_result
from tests.results.test_tracking import _records, _summary, offline_env  # noqa: F401 - fixture


def _run_dir(root: Path) -> Path:
    (run_dir,) = (root / "wandb").glob("offline-run-*")
    return run_dir


def _final_records(run_dir: Path) -> list:
    """The run's records once wandb-core has flushed its log (it may lag behind finish() under load)."""
    _summary(run_dir)  # waits for the exit record (up to 60 s)
    return _records(next(run_dir.glob("*.wandb")))


def _run_record(run_dir: Path):
    return next(r.run for r in _final_records(run_dir) if r.WhichOneof("record_type") == "run")


def _config(run) -> dict:
    return {item.key: json.loads(item.value_json) for item in run.config.update}


def _artifacts(run_dir: Path) -> dict[str, object]:
    recs = _final_records(run_dir)
    return {r.artifact.name: r.artifact for r in recs if r.WhichOneof("record_type") == "artifact"}


def _table(run_dir: Path, prefix: str) -> dict:
    (path,) = (run_dir / "files" / "media" / "table").glob(f"{prefix}*.table.json")
    return json.loads(path.read_text())


def test_method_run_is_named_grouped_tagged_with_board_curves_and_artifacts(offline_env, tmp_path):  # noqa: F811
    res = make_result("bct", 1)
    res.hparams_digest = "ab12cd34"
    res.method_hparams = {"weight": 2.0}
    path = write_result(res, tmp_path / "results")
    ckpt = tmp_path / "last.ckpt"
    ckpt.write_bytes(b"weights")
    entries = gate([], [*all_fixture_results(), res]).entries
    board = run_summary(entries, res.label, res.seed, YOURS)
    assert tracking.log_run_result(res, path, save_dir=tmp_path, board=board, checkpoint=ckpt)

    run_dir = _run_dir(tmp_path)
    run = _run_record(run_dir)
    assert run.display_name == "bct@ab12cd34/seed1" and run.run_group == BENCH and run.job_type == "bct"
    assert list(run.tags) == ["bct", BENCH, "hp-ab12cd34"]
    config = _config(run)
    assert config["method_hparams"] == {"weight": 2.0} and config["old_identity"] == res.old_identity

    summary = _summary(run_dir)
    assert summary["board/seed/P_1"] == pytest.approx(board["seed/P_1"])
    assert 0 < board["seed/P_1"] < 100 and board["all/seeds"] == 1
    assert summary["board/all/rsynth cross>old"] == "≈"  # one seed: undecided, as on the leaderboard

    # one line plot per (eval set, protocol, metric), one series per mode/order, points = mean over order seeds
    series = tracking.backfill_series(res)
    assert series, "the fixture has backfilling curves"
    for key, want in series.items():
        got = _table(run_dir, f"{key}_table")
        pts = {}
        for x, name, y in got["data"]:
            pts.setdefault(name, []).append((x, y))
        assert sorted(pts) == want["keys"]
        for name, ys in zip(want["keys"], want["ys"], strict=True):
            assert [p[0] for p in pts[name]] == pytest.approx(want["xs"])
            assert [p[1] for p in pts[name]] == pytest.approx(ys)

    arts = _artifacts(run_dir)
    assert {"run-result", "model"} <= {a.type for a in arts.values()}  # (+ W&B's own run_table ones)
    assert f"result-{BENCH}-bct_ab12cd34-seed1" in arts and f"model-{BENCH}-bct_ab12cd34-seed1" in arts


def test_old_model_is_a_run_and_an_artifact_logged_once(offline_env, tmp_path):  # noqa: F811
    weights = tmp_path / "seed0.pt"
    weights.write_bytes(b"old weights")
    ident = "sha256:" + "c" * 64
    assert tracking.log_old_model(BENCH, 0, weights, ident, tmp_path)
    assert tracking.log_old_model(BENCH, 0, weights, ident, tmp_path) is None  # once per identity
    run_dir = _run_dir(tmp_path)
    run = _run_record(run_dir)
    assert run.display_name == "old-model/seed0" and run.job_type == "old-model" and run.run_group == BENCH
    (art,) = [a for a in _artifacts(run_dir).values() if a.type == "old-model"]
    assert art.name == f"old-model-{BENCH}-seed0" and art.type == "old-model"
    assert "cccccccccccc" in list(art.aliases)
    logger = tracking.make_wandb_logger("bct", BENCH, 0, {}, tmp_path / "m", old_model=(weights, ident))
    assert logger.experiment.config["old_model_artifact"] == f"old-model-{BENCH}-seed0:{ident}"
    logger.experiment.finish()


def test_leaderboard_published_as_a_table_with_one_row_per_method_and_its_figures(offline_env, tmp_path):  # noqa: F811
    root = tmp_path / "results"
    for res in all_fixture_results():
        write_result(res, root)
    text, run_id, folder = publish(root, BENCH, tmp_path / "wandb-runs", tmp_path / "plots")
    assert run_id and folder is not None and folder.is_dir() and folder.name.endswith(run_id)
    run = _run_record(folder)
    assert run.display_name == f"leaderboard/{BENCH}" and run.job_type == "leaderboard"

    lb = leaderboard(gate(all_fixture_results()).entries)
    want = board_table(lb)
    table = _table(folder, "leaderboard_")
    assert table["columns"] == [str(c) for c in want.columns]
    assert [row[0] for row in table["data"]] == list(want["method"])  # one row per method, board order
    col = next(c for c in want.columns if c.startswith("rsynth") and c.endswith("new→old"))
    i = table["columns"].index(col)
    for row, mean, lo, hi in zip(table["data"], want[col], want[f"{col} lo"], want[f"{col} hi"], strict=True):
        assert row[i] == pytest.approx(mean, nan_ok=True)
        assert lo <= mean <= hi or mean != mean or lo != lo
    summary = _summary(folder)
    pngs = sorted(p.stem for p in (tmp_path / "plots").glob("*.png"))
    assert pngs and sorted(k.split("/", 1)[1] for k in summary if k.startswith("figures/")) == pngs
    (art,) = [a for a in _artifacts(folder).values() if a.type == "leaderboard"]
    assert art.name == f"leaderboard-{BENCH}"
    assert "| bct |" in text or "bct" in text
