"""The perf scripts ``benchmarks/perf/gldv2_scale.py`` and ``benchmarks/perf/gpu_check.py`` run end to end on
CPU at tiny sizes (subprocesses, as a user runs them): exit status, summary lines, and that a failing section
of ``gpu_check`` is reported while the others still run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PERF = ROOT / "benchmarks" / "perf"


def _run(script: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(
        [sys.executable, str(PERF / script), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_gldv2_scale_tiny(tmp_path):
    out = tmp_path / "scale.json"
    proc = _run("gldv2_scale.py", "--tiny", "--threads", "2", "--check-queries", "4", "--json", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = proc.stdout
    assert "SUMMARY gldv2_scale:" in text and "within" in text
    for stage in (
        "gldv2: search top-100 (torch)",
        "gldv2: mAP@100",
        "roxford: revisited_map",
        "rparis: search",
    ):
        assert stage in text
    res = json.loads(out.read_text())
    assert res["gldv2"]["queries"] == 2000 and res["gldv2"]["gallery"] == 20000
    assert res["gldv2"]["check_same_set"] == res["gldv2"]["check_queries"] == 4  # ranking = brute force
    assert 0.0 < res["gldv2"]["map_at_k"] <= 1.0
    assert set(res["revisited"]) == {"roxford", "rparis"}
    assert all(0.0 < v <= 1.0 for case in res["revisited"].values() for v in case["map"].values())
    assert res["process_peak_mib"] > 0 and all(s["seconds"] >= 0 for s in res["stages"])


def test_gpu_check_tiny_cpu():
    proc = _run("gpu_check.py", "--tiny", "--device", "cpu", "--threads", "2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = proc.stdout
    assert "SUMMARY gpu_check on cpu" in text
    assert "RESULT gpu_check: all sections passed" in text
    summary = text[text.index("SUMMARY gpu_check") :]
    for section in (
        "train:independent",
        "train:bct",
        "train:advbct",
        "extract:new",
        "extract:old",
        "search:torch",
        "search:faiss",
        "ddp",
    ):
        line = next(x for x in summary.splitlines() if x.startswith(section + " "))
        assert line.split()[1] == "ok", line
    assert "img/s" in summary and "all_reduce ok" in summary
    assert "FAIL" not in text


def test_gpu_check_reports_a_failing_section_and_goes_on():
    proc = _run(
        "gpu_check.py",
        "--tiny",
        "--device",
        "cpu",
        "--threads",
        "2",
        "--methods",
        "no_such_method",
        "independent",
        "--sections",
        "train",
        "search",
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    text = proc.stdout
    assert "FAIL train:no_such_method:" in text
    summary = text[text.index("SUMMARY gpu_check") :]
    assert any(x.startswith("train:independent ") and x.split()[1] == "ok" for x in summary.splitlines())
    assert any(x.startswith("search:torch ") and x.split()[1] == "ok" for x in summary.splitlines())
    assert "RESULT gpu_check: FAIL (train:no_such_method)" in text


@pytest.mark.slow
def test_queue_speedup_smoke_with_a_one_core_base(tmp_path):
    """The queue script end to end on the smoke benchmark: every pass writes its results (the script checks
    the count) and the table has a ratio against both bases; no timing is asserted."""
    proc = _run(
        "queue_speedup.py",
        "--benchmark", "smoke", "--methods", "independent", "--seeds", "0", "--jobs", "1", "2",
        "--one-core-base", "--no-warmup",
        "--data-root", str(tmp_path / "data"), "--cache-root", str(tmp_path / "cache"),
        timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "| --jobs | wall s (best) | runs/hour | × --jobs 1 | × --jobs 1 on one core |" in proc.stdout
    assert "| 1 on one core |" in proc.stdout and "| 2 |" in proc.stdout


def test_queue_speedup_pairs_ratios_within_a_round():
    """Each round's ratio uses that round's base: a machine twice as slow in round 2 gives the same speed-up,
    where the best-of-rounds table would mix rounds."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("queue_speedup", PERF / "queue_speedup.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    times = {"1": [200.0, 400.0, 210.0], "2": [100.0, 200.0, 140.0], "1 on one core": [240.0, 480.0, 250.0]}
    got = mod.paired_ratios(times, "1")
    assert set(got) == {"2", "1 on one core"}
    med, lo, hi = got["2"]
    assert (med, lo, hi) == (2.0, 1.5, 2.0)
    med, lo, hi = mod.paired_ratios({"1": [10.0, 30.0], "2": [5.0, 10.0]}, "1")["2"]
    assert (med, lo, hi) == (2.5, 2.0, 3.0)
