"""Bad roots, full disks, crafted checkpoints, broken plugins and stale files around a run: each gets one line
and exit 2, nothing runs from a file, and earlier results and caches stay as they were."""

from __future__ import annotations

import errno
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from bctbench import registry
from bctbench.results import read_result
from tests.reliability.conftest import assert_clean_error, run_cli, snapshot

BASE = ["-b", "smoke", "--no-wandb", "--quiet"]


class _Payload:
    """Unpickling this runs ``os.system(cmd)``: a file that must never be loaded."""

    def __init__(self, cmd: str) -> None:
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def _payload_file(path: Path, marker: Path, wrap=None) -> Path:
    obj = _Payload(f"touch {marker}")
    with open(path, "wb") as fh:
        pickle.dump(wrap(obj) if wrap else obj, fh)
    return path


def _last_ckpt(world) -> Path:
    return world.cache / "runs" / "smoke" / "independent" / "seed0" / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize(
    "how",
    ["bare", "inside_dict", "as_state_dict"],
)
def test_crafted_checkpoint_for_evaluate_is_refused_and_runs_nothing(world, tmp_path, how) -> None:
    marker = tmp_path / "pwned"
    wraps = {
        "bare": None,
        "inside_dict": lambda o: {"state_dict": {}, "hyper_parameters": {"method_name": "bct"}, "x": o},
        "as_state_dict": lambda o: {"state_dict": o},
    }
    ckpt = _payload_file(tmp_path / "evil.ckpt", marker, wraps[how])
    res = run_cli("evaluate", "-b", "smoke", "--checkpoint", ckpt, "--no-wandb", *world.args())
    assert_clean_error(res, str(ckpt))
    assert not marker.exists()


def test_crafted_cached_checkpoint_for_reevaluate_is_refused(world, tmp_path) -> None:
    marker = tmp_path / "pwned"
    _payload_file(_last_ckpt(world), marker, lambda o: {"state_dict": {}, "x": o})
    before = snapshot(world.results)
    res = run_cli("reevaluate", "-b", "smoke", "--no-wandb", *world.args())
    assert res.code != 0 and "Traceback" not in res.err
    assert "last.ckpt" in res.err and not marker.exists()
    assert snapshot(world.results) == before


def test_crafted_checkpoint_for_resume_is_not_loaded(world, tmp_path) -> None:
    marker = tmp_path / "pwned"
    _payload_file(_last_ckpt(world), marker)
    res = run_cli("run", "-m", "independent", *BASE, "--resume", *world.args())
    assert not marker.exists()
    assert res.code == 0, res.err[-2000:]  # the unreadable checkpoint is skipped: trains from scratch


def test_results_root_that_is_a_file(world, tmp_path) -> None:
    bad = tmp_path / "results-file"
    bad.write_text("not a folder")
    res = run_cli(
        "run",
        "-m",
        "independent",
        *BASE,
        "--data-root",
        world.data,
        "--cache-root",
        world.cache,
        "--results-root",
        bad,
    )
    assert_clean_error(res, str(bad), "not a folder")
    assert bad.read_text() == "not a folder"


def test_read_only_results_root(world) -> None:
    root = Path("/sys/bctbench-results")  # a read-only file system, even for root
    res = run_cli(
        "run",
        "-m",
        "independent",
        *BASE,
        "--data-root",
        world.data,
        "--cache-root",
        world.cache,
        "--results-root",
        root,
    )
    assert_clean_error(res, str(root), "cannot write")


def test_disk_full_while_writing_the_result(world, monkeypatch) -> None:
    import bctbench.identity as identity

    before = snapshot(world.results)
    real = identity.os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(identity.os, "fsync", full)
    res = run_cli("run", "-m", "independent", *BASE, *world.args())
    monkeypatch.setattr(identity.os, "fsync", real)
    line = assert_clean_error(res, "No space left on device")
    assert "/" in line.split("No space left")[0]  # names the file being written
    assert snapshot(world.results) == before  # no partial file, the earlier result intact
    assert not list(world.results.rglob("*.tmp"))


def test_stale_temporary_files_are_removed_by_the_next_write(world) -> None:
    folder = world.results / "smoke" / "independent"
    stale = folder / ".seed0.json.abc123.tmp"
    stale.write_text("{partial")
    res = run_cli("run", "-m", "independent", *BASE, *world.args())
    assert res.code == 0, res.err[-2000:]
    assert not stale.exists() and read_result(folder / "seed0.json").method == "independent"


def test_a_failing_run_keeps_the_previous_run_folder(world) -> None:
    run_dir = world.cache / "runs" / "smoke" / "independent" / "seed0"
    before = snapshot(run_dir, world.results)
    res = run_cli("run", "-m", "independent", *BASE, "--set", "num_workers=-1", *world.args())
    assert_clean_error(res, "num_workers")
    assert snapshot(run_dir, world.results) == before


class Exploding(registry.get_method("l2")):  # test-only: a plugin whose __init__ raises
    name = "exploding_init"

    def __init__(self, setup, **kwargs) -> None:
        raise RuntimeError("boom in __init__\nsecond line")


def test_exception_in_a_plugins_init_names_the_plugin(world) -> None:
    registry.register_method(Exploding.name)(Exploding)
    try:
        before = snapshot(world.results)
        res = run_cli("run", "-m", "exploding_init", *BASE, *world.args())
    finally:
        registry.unregister_method(Exploding.name)
    line = assert_clean_error(res, "exploding_init", "RuntimeError", "boom in __init__")
    assert "second line" not in line and snapshot(world.results) == before


def test_corrupt_cached_old_model_record(world) -> None:
    res = run_cli("train-old", "-b", "smoke", "--seeds", "5", "--no-wandb", *world.args())
    assert res.code == 0, res.err[-2000:]
    record = next(world.cache.rglob("seed5/old_model.json"))
    record.write_text("{not json")
    assert_clean_error(
        run_cli("train-old", "-b", "smoke", "--seeds", "5", "--no-wandb", *world.args()),
        str(record),
        "unreadable",
    )


def test_cached_old_model_swapped_for_another(world) -> None:
    assert run_cli("train-old", "-b", "smoke", "--seeds", "5", "--no-wandb", *world.args()).code == 0
    record = next(world.cache.rglob("seed5/old_model.json"))
    model = record.with_name("old_model.pt")
    pinned = Path(__file__).resolve().parents[2] / "benchmarks" / "old_models" / "smoke" / "seed0.pt"
    shutil.copy(pinned, model)
    assert_clean_error(
        run_cli("train-old", "-b", "smoke", "--seeds", "5", "--no-wandb", *world.args()),
        str(model),
        "another old model",
    )


def test_pinned_old_model_file_replaced(world, tmp_path) -> None:
    import yaml

    from bctbench.config import BENCHMARKS_DIR

    spec = tmp_path / "spec" / "smoke.yaml"
    spec.parent.mkdir()
    shutil.copy(BENCHMARKS_DIR / "smoke.yaml", spec)
    shutil.copytree(BENCHMARKS_DIR / "old_models" / "smoke", spec.parent / "old_models" / "smoke")
    shutil.copy(
        spec.parent / "old_models" / "smoke" / "seed1.pt", spec.parent / "old_models" / "smoke" / "seed0.pt"
    )
    assert yaml.safe_load(spec.read_text())["old_model"]["pinned"][0]
    before = snapshot(world.results)
    res = run_cli("run", "-b", spec, "-m", "independent", "--no-wandb", "--quiet", *world.args())
    assert_clean_error(res, "seed0.pt", "another old model")
    assert snapshot(world.results) == before


def test_garbage_method_checkpoint_for_evaluate(world, tmp_path) -> None:
    ckpt = tmp_path / "garbage.ckpt"
    ckpt.write_bytes(b"\x00not a checkpoint" * 10)
    assert_clean_error(run_cli("evaluate", "-b", "smoke", "--checkpoint", ckpt, *world.args()), str(ckpt))


def test_old_model_checkpoint_as_method_checkpoint(world, tmp_path) -> None:
    ckpt = tmp_path / "old.ckpt"
    torch.save({"format": "bctbench-old-model/2"}, ckpt)
    assert_clean_error(run_cli("evaluate", "-b", "smoke", "--checkpoint", ckpt, *world.args()), str(ckpt))
