"""W&B sink: mode selection, a real offline run, and failures that never propagate."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import pytest

from bctbench import tracking
from bctbench.results import write_result
from bctbench.tracking import log_run_result, make_wandb_logger, summary_from_result, wandb_mode
from tests.results.bct_results_fixtures import BENCH, make_result

KEY = "test/rsynth/medium/new-old/mAP"


@pytest.fixture
def offline_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Offline W&B writing only under tmp_path, no API key anywhere."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var, sub in (("WANDB_CONFIG_DIR", "cfg"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_DATA_DIR", "data")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    return tmp_path


def _records(path: Path) -> list:
    """Decode a ``.wandb`` transaction log (LevelDB-style log of ``Record`` protobufs, 7-byte file header)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block, pos = path.read_bytes(), 32768, 7
    assert data[:4] == b":W&B"
    chunks, buf = [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if pos + 7 + length > len(data):  # still being written
            break
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 1:
            chunks.append(chunk)
        elif kind in (2, 3):
            buf += chunk
        elif kind == 4:
            chunks.append(buf + chunk)
            buf = b""
    out = []
    for c in chunks:
        rec = pb.Record()
        rec.ParseFromString(c)
        out.append(rec)
    return out


def _summary(run_dir: Path) -> dict:
    """The summary as W&B recorded it: ``files/wandb-summary.json`` when this wandb writes it offline, plus the
    summary records of the transaction log (wandb >= 0.19 writes the JSON file only when syncing)."""
    log = next(run_dir.glob("*.wandb"))
    deadline = (
        time.monotonic() + 60
    )  # wandb-core flushes the log shortly after finish() returns (slower under load)
    while True:
        records = _records(log)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    summary: dict = {}
    for rec in records:
        if rec.WhichOneof("record_type") == "summary":
            for item in rec.summary.update:
                path = [item.key] if item.key else list(item.nested_key)
                node = summary
                for part in path[:-1]:
                    node = node.setdefault(part, {})
                node[path[-1]] = json.loads(item.value_json)
    js = run_dir / "files" / "wandb-summary.json"
    if js.exists():
        summary.update(json.loads(js.read_text()))
    return summary


def test_wandb_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_DISABLED", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert wandb_mode() == "offline"
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password abc123\n")
    assert wandb_mode() == "online"
    (tmp_path / "netrc").write_text("machine example.com\n  login user\n  password abc123\n")
    assert wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode() == "disabled"
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    assert wandb_mode() == "offline"


def test_summary_from_result() -> None:
    summary = summary_from_result(make_result("bct", 1))
    assert summary[KEY] == pytest.approx(0.46)
    assert "test/rsynth/easy/new-old/mAP" not in summary  # primary protocol only
    assert "test/gsynth/private/new-new/mAP@100" in summary
    assert "test/rsynth/medium/backfill-mixed-random/mAP_auc" in summary


def test_offline_run_records_summary(offline_env: Path, tmp_path: Path) -> None:
    res = make_result("bct", 1)
    path = write_result(res, tmp_path / "results")
    png = tmp_path / "plot.png"
    from matplotlib.figure import Figure

    Figure(figsize=(1, 1)).savefig(png)
    lb = __import__("pandas").DataFrame({"method": ["bct"], "P_1": [51.2], "note": [None]})

    start = time.perf_counter()
    run_id = log_run_result(res, path, leaderboard_df=lb, plots=[png], save_dir=tmp_path)
    elapsed = time.perf_counter() - start
    assert elapsed < 20, f"offline W&B took {elapsed:.1f} s"

    assert isinstance(run_id, str) and run_id
    run_dirs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(run_dirs) == 1 and run_dirs[0].name.endswith(run_id)
    assert list(run_dirs[0].glob("*.wandb"))
    summary = _summary(run_dirs[0])
    assert summary[KEY] == pytest.approx(0.46)
    assert summary["test/gsynth/private/new-new/mAP@100"] == pytest.approx(0.28)
    assert summary["time/fit"] == pytest.approx(1.5)
    assert summary["metrics"]["_type"] == "table-file"
    assert summary["leaderboard"]["_type"] == "table-file"
    assert summary["plots/plot"]["_type"] == "image-file"
    import wandb

    assert wandb.run is None  # finished


def test_training_logger_then_result_in_same_run(offline_env: Path, tmp_path: Path) -> None:
    logger = make_wandb_logger("bct", BENCH, 2, {"lr": 0.1}, tmp_path / "logs")
    assert logger is not None
    run_id = logger.experiment.id
    res = make_result("bct", 2)
    res.wandb_run = run_id
    path = write_result(res, tmp_path / "results")
    assert log_run_result(res, path, save_dir=tmp_path) == run_id
    run_dir = next((tmp_path / "logs" / "wandb").glob(f"offline-run-*-{run_id}"))
    assert _summary(run_dir)[KEY] == pytest.approx(0.47)


def test_disabled_mode_does_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    res = make_result("bct", 0)
    path = write_result(res, tmp_path)
    assert make_wandb_logger("bct", BENCH, 0, {}, tmp_path) is None
    assert make_wandb_logger("bct", BENCH, 0, {}, tmp_path, enabled=False) is None
    assert log_run_result(res, path, save_dir=tmp_path) is None
    assert not (tmp_path / "wandb").exists()


def test_failures_warn_and_return_none(
    offline_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import wandb

    def boom(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("wandb is down")

    monkeypatch.setattr(wandb, "init", boom)
    res = make_result("bct", 0)
    path = write_result(res, tmp_path)
    with pytest.warns(UserWarning, match="W&B result upload failed .*wandb is down"):
        assert log_run_result(res, path, save_dir=tmp_path) is None
    with pytest.warns(UserWarning, match="W&B logger setup failed"):
        assert make_wandb_logger("bct", BENCH, 0, {}, tmp_path) is None
    assert (
        tracking.run_name("bct", 0) == "bct/seed0"
        and tracking.run_name("bct@1a2b", 3, "g1") == "bct@1a2b/seed3/g1"
    )
