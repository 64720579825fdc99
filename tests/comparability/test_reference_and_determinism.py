"""Reference results are apart from a user's runs (written only by --reference from a clean tree); a run's
result does not depend on whether the caches were warm."""

from __future__ import annotations

from pathlib import Path

import pytest

from bctbench import pipeline
from bctbench.errors import ConfigError
from bctbench.paths import REFERENCE_ROOT, is_reference_root, resolve_results_root


def test_user_runs_never_go_to_the_reference_folder(monkeypatch) -> None:
    monkeypatch.delenv("BCTBENCH_RESULTS", raising=False)
    assert resolve_results_root() == Path("results") / "local"
    assert not is_reference_root(resolve_results_root())
    with pytest.raises(ConfigError, match="written only by `--reference` runs"):
        pipeline.RunContext.create("smoke", results_root=REFERENCE_ROOT / "smoke" / "..")
    monkeypatch.setenv("BCTBENCH_RESULTS", str(REFERENCE_ROOT))
    with pytest.raises(ConfigError, match="written only by `--reference` runs"):
        pipeline.RunContext.create("smoke")


@pytest.mark.parametrize(
    ("git", "message"), [({"sha": "a" * 40, "dirty": True}, "clean tree"), ({"sha": None}, "git checkout")]
)
def test_reference_runs_need_a_clean_committed_tree(monkeypatch, git, message) -> None:
    import bctbench.results as results

    monkeypatch.setattr(results, "collect_provenance", lambda cwd=None: {"git": git, "env": {}})
    with pytest.raises(ConfigError, match=message):
        pipeline.RunContext.create("smoke", reference=True)
    monkeypatch.setattr(
        results, "collect_provenance", lambda cwd=None: {"git": {"sha": "a" * 40, "dirty": False}}
    )
    assert pipeline.RunContext.create("smoke", reference=True).results_root == REFERENCE_ROOT


def _run(tmp_path: Path, cache: str):
    ctx = pipeline.RunContext.create(
        "smoke", cache_root=tmp_path / cache, results_root=tmp_path / f"r-{cache}"
    )
    return pipeline.run(ctx, "bct", seed=0, runtime=pipeline.Runtime(wandb=False, accelerator="cpu"))


def test_cold_and_warm_caches_give_bit_identical_results(tmp_path: Path) -> None:
    cold = _run(tmp_path, "a")  # computes the old-model artefacts and features
    warm = _run(tmp_path, "a")  # reads them from the cache
    fresh = _run(tmp_path, "b")  # cold again, in another cache
    assert cold.timings["artifacts"] > warm.timings["artifacts"]
    for other in (warm, fresh):
        assert other.metrics == cold.metrics
        assert other.per_query == cold.per_query
        assert other.eval_variants["encoders"] == cold.eval_variants["encoders"]


def test_result_files_do_not_make_the_tree_dirty(tmp_path: Path) -> None:
    import subprocess

    from bctbench.results import _git_info

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "results" / "reference").mkdir(parents=True)
    (tmp_path / "results" / "reference" / "r.json").write_text("{}\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    assert _git_info(tmp_path)["dirty"] is False
    (tmp_path / "results" / "reference" / "r.json").write_text('{"new": 1}\n')  # a queue writing results
    assert _git_info(tmp_path)["dirty"] is False
    (tmp_path / "code.py").write_text("x = 2\n")
    assert _git_info(tmp_path)["dirty"] is True


def test_loader_workers_do_not_change_the_result(tmp_path: Path) -> None:
    results = []
    for workers in (0, 1):
        ctx = pipeline.RunContext.create(
            "smoke", cache_root=tmp_path / f"c{workers}", results_root=tmp_path / f"r{workers}"
        )
        runtime = pipeline.Runtime(wandb=False, accelerator="cpu", num_workers=workers)
        results.append(pipeline.run(ctx, "bct", seed=0, runtime=runtime))
    assert results[0].env["num_workers"] == 0 and results[1].env["num_workers"] == 1
    assert results[0].metrics == results[1].metrics and results[0].per_query == results[1].per_query
