"""`kill -9` after epoch 1, then `--resume`: the metrics equal those of an uninterrupted run of the same seed, the
result says it was resumed, and a checkpoint of another run is refused."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from bctbench.config import BENCHMARKS_DIR
from bctbench.results import read_result
from tests.reliability.conftest import assert_clean_error, run_cli

EPOCHS = 4


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> Path:
    """A multi-epoch copy of `smoke` (same pinned old models)."""
    base = tmp_path_factory.mktemp("spec")
    raw = yaml.safe_load((BENCHMARKS_DIR / "smoke.yaml").read_text())
    raw["name"] = "smoke_resume"
    raw["training"]["epochs"] = EPOCHS
    path = base / "smoke_resume.yaml"
    path.write_text(yaml.safe_dump(raw))
    shutil.copytree(BENCHMARKS_DIR / "old_models" / "smoke", base / "old_models" / "smoke_resume")
    return path


def _roots(base: Path) -> list[str]:
    return [
        "--data-root",
        str(base / "d"),
        "--cache-root",
        str(base / "c"),
        "--results-root",
        str(base / "r"),
    ]


def _argv(spec: Path, base: Path, *extra: str) -> list[str]:
    return ["run", "-b", str(spec), "-m", "bct", "--no-wandb", "--quiet", *_roots(base), *extra]


def test_kill_after_epoch_one_then_resume_gives_identical_metrics(spec: Path, tmp_path: Path) -> None:
    straight = run_cli(*_argv(spec, tmp_path / "a"))
    assert straight.code == 0, straight.err[-3000:]
    reference = read_result(tmp_path / "a" / "r" / "smoke_resume" / "bct" / "seed0.json")

    base = tmp_path / "b"
    work = base / "c" / "runs" / "smoke_resume" / "bct" / "seed0.partial" / "checkpoints"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bctbench.cli", *_argv(spec, base)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ),  # same thread count as the in-process runs: reductions depend on it
    )
    deadline = time.time() + 300
    while not (work / "epoch000.ckpt").is_file():
        assert proc.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.02)
    time.sleep(0.3)  # into epoch 2
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    result_path = base / "r" / "smoke_resume" / "bct" / "seed0.json"
    assert not result_path.exists() and not (work / f"epoch{EPOCHS - 1:03d}.ckpt").exists(), "killed too late"

    resumed = run_cli(*_argv(spec, base, "--resume"))
    assert resumed.code == 0, resumed.err[-3000:]
    again = read_result(result_path)
    assert again.resumed and not reference.resumed
    assert again.metrics == reference.metrics
    assert again.per_query == reference.per_query
    assert again.curves == reference.curves
    assert again.eval_variants["encoders"] == reference.eval_variants["encoders"]
    assert not (base / "c" / "runs" / "smoke_resume" / "bct" / "seed0.partial").exists()  # swapped into place


@pytest.fixture(scope="module")
def finished(spec: Path, tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("finished")
    assert run_cli(*_argv(spec, base)).code == 0
    return base


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("old_identity", "e" * 64),
        ("benchmark_sha256", "c" * 64),
        ("dataset_sha256", "d" * 64),
        ("hparams_digest", "0badc0de"),
    ],
)
def test_resume_refuses_a_checkpoint_of_another_run(spec, finished, tmp_path, field, value) -> None:
    base = tmp_path / "run"
    shutil.copytree(finished, base)
    result = base / "r" / "smoke_resume" / "bct" / "seed0.json"
    before = result.read_bytes()
    last = base / "c" / "runs" / "smoke_resume" / "bct" / "seed0" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    checkpoint["bctbench"][field] = value  # as if written by another old model / spec / data / hparams
    torch.save(checkpoint, last)
    res = run_cli(*_argv(spec, base, "--resume"))
    assert_clean_error(res, str(last), field, "cannot resume")
    assert result.read_bytes() == before
