"""`bctbench run-all --jobs N`: parallel subprocess jobs with progress lines, skipping of finished runs,
resuming after the queue is killed (metrics equal to straight runs), and one-line errors for bad --jobs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bctbench import pipeline
from bctbench.config import load_benchmark
from bctbench.results import read_result, result_path
from bctbench.resume import latest_checkpoint
from bctbench.run_queue import Job, _command, check_jobs, default_jobs, plan_jobs
from tests.conftest import patch_pipeline
from tests.reliability.conftest import assert_clean_error, run_cli

METHODS = ("independent", "bct")
THREADS = max(1, (os.cpu_count() or 1) // 2)  # what `--jobs 2` gives each of two jobs


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """One generated tiny dataset for the whole module (generation is deterministic)."""
    return tmp_path_factory.mktemp("queue-data") / "data"


def _roots(data: Path, base: Path) -> list[str]:
    return [
        "--data-root",
        str(data),
        "--cache-root",
        str(base / "cache"),
        "--results-root",
        str(base / "results"),
    ]


def _run_all(data: Path, base: Path, *extra: str) -> list[str]:
    return ["run-all", "-b", "smoke", "--seeds", "0", "--no-wandb", "--quiet", *_roots(data, base), *extra]


def _result(base: Path, method: str, digest: str = "default") -> Path:
    return result_path(base / "results", "smoke", method, 0, digest)


def _children_of(marker: str) -> list[int]:
    """Pids of live processes whose command line mentions ``marker`` (Linux /proc; [] elsewhere)."""
    pids = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmdline and state != "Z" and int(entry.name) != os.getpid():
            pids.append(int(entry.name))
    return pids


def _wait_no_children(marker: str, timeout: float = 15.0) -> None:
    deadline = time.time() + timeout
    while _children_of(marker) and time.time() < deadline:
        time.sleep(0.1)
    assert not _children_of(marker), "jobs outlived the queue"


# ------------------------------------------------------------------------------------------ options
@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_bad_jobs_is_a_one_line_error(value, data_root, tmp_path):
    res = run_cli(*_run_all(data_root, tmp_path, "--methods", "independent", "--jobs", value))
    assert_clean_error(res, "--jobs", code=2)
    assert not (tmp_path / "results").exists()


def test_check_jobs_and_default_jobs(monkeypatch):
    assert check_jobs(None) is None and check_jobs("auto") is None and check_jobs("3") == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))  # the cores this process may use
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    cpu = pipeline.Runtime(accelerator="cpu")
    assert default_jobs(cpu, 3) == 3 and default_jobs(cpu, 20) == 8 and default_jobs(cpu, 0) == 1
    monkeypatch.delattr(os, "sched_getaffinity")  # platforms without affinity masks: the core count
    assert default_jobs(cpu, 100) == 64
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert default_jobs(pipeline.Runtime(accelerator="gpu"), 20) == 4
    assert default_jobs(pipeline.Runtime(accelerator="auto"), 2) == 2


def test_cpu_jobs_share_the_cores_without_oversubscribing_them():
    from bctbench.run_queue import cpu_job_resources

    assert cpu_job_resources(2, 2, 1, False) == (1, 0)  # every core trains a job: in-process loading
    assert cpu_job_resources(1, 1, 1, False) == (1, 0)  # one core: the same
    assert cpu_job_resources(2, 1, 1, False) == (1, 1)  # a lone job: the worker gets the second core
    assert cpu_job_resources(16, 2, 2, False) == (8, 0)
    assert cpu_job_resources(16, 1, 2, False) == (14, 2)
    assert cpu_job_resources(2, 2, 1, True) == (1, 1)  # the user's --num-workers is kept
    assert cpu_job_resources(8, 2, 3, True) == (1, 3)


def test_job_command_forwards_roots_and_options(tmp_path):
    ctx = pipeline.RunContext.create("smoke", tmp_path / "d", tmp_path / "c", tmp_path / "r")
    runtime = pipeline.Runtime(accelerator="cpu", num_workers=1, wandb=False)
    (job,) = plan_jobs(["bct"], [2], ["weight=2"])
    job.resume = True
    argv = _command(ctx, job, runtime, ["weight=2"], str(ctx.spec.source))
    assert argv[:4] == [sys.executable, "-m", "bctbench.cli", "run"]
    text = " ".join(argv)
    for part in (
        "-m bct",
        "--seed 2",
        f"--data-root {(tmp_path / 'd').resolve()}",
        f"--cache-root {(tmp_path / 'c').resolve()}",
        f"--results-root {(tmp_path / 'r').resolve()}",
        "--set weight=2",
        "--accelerator cpu",
        "--num-workers 1",
        "--no-wandb",
        "--resume",
    ):
        assert part in text, part
    assert job.label.startswith("bct@") and job.name == f"{job.label}/seed2"


def test_unknown_method_fails_alone_and_seed_set_is_refused(data_root, tmp_path):
    (bad,) = plan_jobs(["nosuch"], [0], [])
    assert isinstance(bad, Job) and bad.error and "nosuch" in bad.error
    res = run_cli(*_run_all(data_root, tmp_path, "--methods", "independent", "--set", "seed=1"))
    assert_clean_error(res, "--set seed", "--seeds")


# ---------------------------------------------------------------------------------------- the queue
def test_two_jobs_in_parallel_then_skipped_then_rerun_when_identity_changes(data_root, tmp_path):
    argv = _run_all(data_root, tmp_path, "--methods", *METHODS, "--jobs", "2")
    res = run_cli(*argv)
    assert res.code == 0, res.out[-3000:] + res.err[-3000:]
    for i, method in enumerate(METHODS, 1):
        assert f"[{i}/2] {method} seed 0 started" in res.out
        assert f"[{i}/2] {method} seed 0 done in " in res.out
        assert _result(tmp_path, method).is_file()
        log = tmp_path / "cache" / "queue" / "smoke" / f"{method}-seed0.log"
        assert "result written" in log.read_text()  # the job's own output went to its log
        assert '"--num-workers", "0"' in log.read_text()  # both cores train: no loader worker processes
    assert "2 done, 0 skipped, 0 failed" in res.out
    assert "| independent" in res.out  # the leaderboard follows
    before = {m: _result(tmp_path, m).read_bytes() for m in METHODS}

    again = run_cli(*argv)
    assert again.code == 0, again.err[-3000:]
    for i, method in enumerate(METHODS, 1):
        assert f"[{i}/2] {method} seed 0 skipped (result exists)" in again.out
        assert _result(tmp_path, method).read_bytes() == before[method]
    assert "started" not in again.out

    path = _result(tmp_path, "bct")
    data = json.loads(path.read_text())
    data["benchmark_sha256"] = "0" * 64  # written under another spec
    path.write_text(json.dumps(data))
    third = run_cli(*argv)
    assert third.code == 0, third.err[-3000:]
    assert "[1/2] independent seed 0 skipped (result exists)" in third.out
    assert "[2/2] bct seed 0 done in " in third.out
    assert read_result(path).benchmark_sha256 == load_benchmark("smoke").sha256
    assert _result(tmp_path, "independent").read_bytes() == before["independent"]


def test_set_hyperparameters_give_the_pipelines_label(data_root, tmp_path):
    argv = _run_all(data_root, tmp_path, "--methods", "bct", "--set", "weight=2", "--jobs", "1")
    res = run_cli(*argv)
    assert res.code == 0, res.out[-3000:] + res.err[-3000:]
    (job,) = plan_jobs(["bct"], [0], ["weight=2"])
    result = read_result(_result(tmp_path, "bct", job.digest))
    assert result.hparams_digest == job.digest != "default" and result.method_hparams["weight"] == 2
    again = run_cli(*argv)
    assert f"[1/1] {job.label} seed 0 skipped (result exists)" in again.out
    forced = run_cli(*argv, "--force")
    assert forced.code == 0 and f"[1/1] {job.label} seed 0 done in " in forced.out


def test_sigterm_stops_the_jobs_and_exits_130(data_root, tmp_path):
    out = tmp_path / "queue.out"
    with open(out, "w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bctbench.cli", *_run_all(data_root, tmp_path, "--methods", "bct")],
            stdout=fh,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.time() + 120
        while "started" not in out.read_text():
            assert proc.poll() is None and time.time() < deadline, out.read_text()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: run-all interrupted: stopped 1 running job(s)")
    assert "Traceback" not in err
    _wait_no_children(str(tmp_path / "cache"))
    assert not _result(tmp_path, "bct").exists()


def _three_epoch_smoke(tmp_path: Path) -> str:
    """A copy of the smoke spec with 3 epochs (its pinned old models beside it): the kill below must land
    between the first epoch's checkpoint and the end of a job, a window of two epochs instead of one
    evaluation, so that a loaded machine cannot make the test miss it."""
    from bctbench.config import BENCHMARKS_DIR

    folder = tmp_path / "specs"
    shutil.copytree(BENCHMARKS_DIR / "old_models" / "smoke", folder / "old_models" / "smoke")
    text = (BENCHMARKS_DIR / "smoke.yaml").read_text()
    text = text.replace("training:\n  epochs: 1\n", "training:\n  epochs: 3\n", 1)
    assert "training:\n  epochs: 3\n" in text
    (folder / "smoke.yaml").write_text(text)
    return str(folder / "smoke.yaml")


def test_kill_the_queue_then_rerun_finishes_with_straight_run_metrics(data_root, tmp_path):
    spec = _three_epoch_smoke(tmp_path)
    # straight runs, one process per method (own cache roots), with the thread count of `--jobs 2`
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS))
    straight = {}
    for method in METHODS:
        base = tmp_path / f"straight-{method}"
        argv = ["run", "-b", spec, "-m", method, "--no-wandb", "--quiet", *_roots(data_root, base)]
        straight[method] = subprocess.Popen(
            [sys.executable, "-m", "bctbench.cli", *argv],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
    for method, proc in straight.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, (method, err[-3000:])

    base = tmp_path / "queue"
    argv = _run_all(data_root, base, "--methods", *METHODS, "--jobs", "2")
    argv[argv.index("smoke")] = spec
    runs = base / "cache" / "runs" / "smoke"
    with open(tmp_path / "queue.out", "w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bctbench.cli", *argv], stdout=fh, stderr=subprocess.STDOUT
        )
        deadline = time.time() + 300
        while not list(runs.glob("*/seed0.partial/checkpoints/epoch000.ckpt")):
            assert proc.poll() is None and time.time() < deadline, (tmp_path / "queue.out").read_text()
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    _wait_no_children(str(base / "cache"))  # the jobs died with the queue
    unfinished = [m for m in METHODS if not _result(base, m).exists()]
    assert unfinished, "killed too late: every job had finished"
    resumable = [m for m in unfinished if latest_checkpoint(runs / m / "seed0.partial") is not None]

    res = run_cli(*argv)
    assert res.code == 0, res.out[-3000:] + res.err[-3000:]
    for method in METHODS:
        ours = read_result(_result(base, method))
        reference = read_result(_result(tmp_path / f"straight-{method}", method))
        assert ours.metrics == reference.metrics, method
        assert ours.per_query == reference.per_query, method
        assert ours.curves == reference.curves, method
        assert ours.resumed == (method in resumable), method
        state = "started (resuming)" if method in resumable else "started"
        if method in unfinished:
            assert f"{method} seed 0 {state}" in res.out
        else:
            assert f"{method} seed 0 skipped (result exists)" in res.out
    assert not list(runs.glob("*/seed0.partial"))


FAILING_PLUGIN = """
from bctbench import CompatibilityMethod, register_method
from bctbench.errors import BCTBenchError


@register_method("queue_boom")
class QueueBoom(CompatibilityMethod):
    paper = "A method that fails in training (tests)"

    def compatibility_loss(self, batch, new, old):
        raise BCTBenchError("boom from the queue_boom plugin")
"""


def test_a_failing_job_is_reported_and_the_others_finish(data_root, tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    (site / "queue_boom_plugin.py").write_text(FAILING_PLUGIN)
    monkeypatch.syspath_prepend(str(site))  # the queue imports it, and so do its jobs:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    try:
        res = run_cli(
            *_run_all(
                data_root, tmp_path, "--methods", "queue_boom_plugin:QueueBoom", "independent", "--jobs", "2"
            )
        )
    finally:
        from bctbench import registry

        registry.unregister_method("queue_boom")
        sys.modules.pop("queue_boom_plugin", None)
    assert res.code == 1, res.out[-3000:] + res.err[-3000:]
    assert "[1/2] queue_boom seed 0 failed (exit 2): boom from the queue_boom plugin" in res.out
    assert "[2/2] independent seed 0 done in " in res.out
    assert "1 done, 0 skipped, 1 failed" in res.out
    assert res.err.strip().splitlines()[-1] == "error: failed runs: queue_boom/seed0"
    assert _result(tmp_path, "independent").is_file() and not _result(tmp_path, "queue_boom").exists()


def test_pipeline_run_all_uses_the_queue_unless_jobs_is_one(tmp_path, monkeypatch):
    from bctbench import run_queue

    calls = []
    monkeypatch.setattr(run_queue, "run_queue", lambda ctx, **kw: calls.append(kw) or ["x/seed0"])
    patch_pipeline(monkeypatch, "run", lambda ctx, name, **kw: calls.append(("run", name, kw["seed"])))
    ctx = pipeline.RunContext.create("smoke", tmp_path / "d", tmp_path / "c", tmp_path / "r")
    assert pipeline.run_all(ctx, methods=["bct"], seeds=[0], jobs=None, force=True) == ["x/seed0"]
    assert calls.pop() == {
        "methods": ["bct"],
        "seeds": [0],
        "overrides": None,
        "runtime": None,
        "jobs": None,
        "force": True,
        "preset": None,
    }
    assert pipeline.run_all(ctx, methods=["bct", "l2"], seeds=[0]) == []  # jobs=1: in this process
    assert calls == [("run", "bct", 0), ("run", "l2", 0)]
