"""RunResult JSON round trip, atomic writes, validation errors and tolerant directory reads."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import bctbench.results as results
from bctbench.errors import BCTBenchError
from bctbench.results import (
    RunResult,
    collect_provenance,
    metrics_frame,
    read_result,
    read_results,
    result_path,
    write_result,
)
from tests.results.bct_results_fixtures import BENCH, all_fixture_results, make_result


def test_round_trip(tmp_path: Path) -> None:
    res = make_result("bct", 1)
    path = write_result(res, tmp_path)
    assert path == tmp_path / BENCH / "bct" / "seed1.json" == result_path(tmp_path, BENCH, "bct", 1)
    back = read_result(path)
    assert back == res
    assert back.schema_version == 2
    assert json.loads(path.read_text())["schema_version"] == 2
    assert "source" not in json.loads(path.read_text())  # where it was read from is not data


def test_nan_is_written_as_null_and_read_back_as_nan(tmp_path: Path) -> None:
    res = make_result("bct", 0)
    res.metrics[0]["value"] = float("nan")
    path = write_result(res, tmp_path)
    assert json.loads(path.read_text())["metrics"][0]["value"] is None
    assert read_result(path).metrics[0]["value"] != read_result(path).metrics[0]["value"]  # NaN


def test_atomic_write_keeps_old_file_on_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = make_result("bct", 0)
    path = write_result(first, tmp_path)
    before = path.read_text()

    second = make_result("bct", 0)
    second.method_hparams = {"lr": 999.0}

    def crash(src, dst):  # noqa: ANN001
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(results.os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        write_result(second, tmp_path)
    monkeypatch.undo()

    assert path.read_text() == before
    assert read_result(path) == first
    assert sorted(p.name for p in path.parent.iterdir()) == ["seed0.json"]  # no temp file left


def test_atomic_write_crash_without_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(results.os, "replace", lambda s, d: (_ for _ in ()).throw(OSError("boom")))
    with pytest.raises(OSError):
        write_result(make_result("l2", 1), tmp_path)
    folder = tmp_path / BENCH / "l2"
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize(
    ("mutate", "key"),
    [
        (lambda d: d.pop("seed"), "seed"),
        (lambda d: d.update(schema_version=3), "schema_version"),
        (lambda d: d.update(metrics="nope"), "metrics"),
        (lambda d: d["metrics"][3].pop("value"), "metrics[3].value"),
        (lambda d: d["primary"].update(rsynth=["medium"]), "primary.rsynth"),
        (lambda d: d.update(bogus=1), "bogus"),
        (lambda d: d["curves"]["backfill"][0]["values"].pop(), "curves.backfill[0].values"),
    ],
)
def test_invalid_file_raises_one_line_naming_file_and_key(tmp_path: Path, mutate, key: str) -> None:  # noqa: ANN001
    data = make_result("bct", 0).to_dict()
    mutate(data)
    path = tmp_path / "seed0.json"
    path.write_text(json.dumps(data))
    with pytest.raises(BCTBenchError) as info:
        read_result(path)
    msg = str(info.value)
    assert "\n" not in msg
    assert str(path) in msg
    assert f"'{key}'" in msg


def test_invalid_json_names_file(tmp_path: Path) -> None:
    path = tmp_path / "seed0.json"
    path.write_text('{"schema_version": 1, ')
    with pytest.raises(BCTBenchError, match="seed0.json: invalid JSON") as info:
        read_result(path)
    assert "\n" not in str(info.value)


def test_read_results_skips_bad_files_with_warning(tmp_path: Path) -> None:
    for res in all_fixture_results():
        write_result(res, tmp_path)
    bad_json = tmp_path / BENCH / "bct" / "seed7.json"
    bad_json.write_text("{not json")
    bad_key = tmp_path / BENCH / "l2" / "seed9.json"
    data = make_result("l2", 9).to_dict()
    del data["method"]
    bad_key.write_text(json.dumps(data))
    (tmp_path / BENCH / "notes.txt").write_text("ignored")

    with pytest.warns(UserWarning) as record:
        got = read_results(tmp_path, BENCH)
    messages = [str(w.message) for w in record]
    assert any("seed7.json" in m and "invalid JSON" in m for m in messages)
    assert any("seed9.json" in m and "'method'" in m for m in messages)
    assert len(got) == len(all_fixture_results())
    assert [(r.method, r.seed) for r in got] == sorted((r.method, r.seed) for r in got)
    assert read_results(tmp_path / "missing") == []


def test_metrics_frame() -> None:
    res = all_fixture_results()
    df = metrics_frame(res)
    assert len(df) == sum(len(r.metrics) for r in res)
    assert {"method", "seed", "flags", "value", "key", "is_primary"} <= set(df.columns)
    row = df[(df.method == "bct") & (df.seed == 1) & (df.query_model == "new") & (df.gallery_model == "old")]
    row = row[row.is_primary & (row.eval_set == "rsynth")]
    assert row["key"].tolist() == ["test/rsynth/medium/new-old/mAP"]
    assert row["value"].tolist() == pytest.approx([0.46])
    assert set(df.loc[df.method == "advbct", "flags"]) == {"advbct_compat"}


def test_collect_provenance_tolerates_missing_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prov = collect_provenance(tmp_path)  # not a repository
    assert prov["git"] == {"sha": None, "dirty": None}
    assert set(prov["env"]) >= {"python", "torch", "lightning", "timm", "faiss", "numpy", "cuda", "platform"}
    monkeypatch.setenv("PATH", os.fspath(tmp_path))  # no git executable at all
    assert collect_provenance(tmp_path)["git"] == {"sha": None, "dirty": None}
    assert isinstance(RunResult(benchmark="b", method="m", seed=0).created_at, str)
