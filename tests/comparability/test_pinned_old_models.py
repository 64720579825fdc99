"""One old model per seed, pinned: committed files carry the identities the specs pin; `train-old` and `run`
reuse them on any machine (other cache roots, other thread counts); a retrained model gets the same identity
on the same machine; wrong checkpoints and stale data are refused with one line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from bctbench import pipeline
from bctbench.cli import main
from bctbench.config import list_benchmarks, load_benchmark
from bctbench.errors import CheckpointError
from bctbench.models import EmbeddingModel
from bctbench.old_model import load_old_model, save_old_checkpoint
from tests.conftest import patch_pipeline

PINNED = [b for b in list_benchmarks() if load_benchmark(b).old_model.pinned]


def test_the_synthetic_benchmarks_pin_an_old_model_per_seed() -> None:
    for name in ("smoke", "synth_class30to100", "synth_data30to100", "synth_seq_class10to30to100"):
        spec = load_benchmark(name)
        assert set(spec.seeds) <= set(spec.old_model.pinned), name


@pytest.mark.parametrize("name", PINNED)
def test_committed_old_models_have_the_pinned_identities(name: str) -> None:
    spec = load_benchmark(name)
    for seed, identity in spec.old_model.pinned.items():
        path = pipeline.pinned_old_model_path(spec, seed)
        assert path.stat().st_size < 1_000_000
        old = load_old_model(path, identity, expect_backbone=spec.models.old_backbone)
        assert old.meta["seed"] == seed and old.meta["benchmark"] == name
        assert len(old.meta["dataset_sha256"]) == 64 and len(old.meta["split_sha256"]) == 64
    assert len(set(spec.old_model.pinned.values())) == len(spec.old_model.pinned)  # a model per seed


def _train_old(tmp_path, cache: str, threads: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": threads, "BCTBENCH_CACHE": str(tmp_path / cache)}
    out = subprocess.run(
        [sys.executable, "-m", "bctbench.cli", "train-old", "-b", "smoke", "--seeds", "0", "1", "--no-wandb"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    ).stdout
    return "\n".join(line for line in out.splitlines() if line.startswith("old model"))


def test_train_old_reuses_the_pinned_models_on_any_cache_and_thread_count(tmp_path) -> None:
    one, two = _train_old(tmp_path, "c1", "1"), _train_old(tmp_path, "c2", "2")
    spec = load_benchmark("smoke")
    assert one == two
    for seed in (0, 1):
        assert f"identity {spec.old_model.pinned[seed]}" in one
        assert str(pipeline.pinned_old_model_path(spec, seed)) in one


def test_retraining_gives_the_same_identity_on_the_same_machine(tmp_path) -> None:
    runtime = pipeline.Runtime(wandb=False, accelerator="cpu")
    ids = []
    for cache in ("a", "b"):
        ctx = pipeline.RunContext.create("smoke", cache_root=tmp_path / cache)
        ids.append(pipeline.ensure_old_model(ctx, runtime, seed=2, retrain=True).identity)
    assert ids[0] == ids[1]
    assert list((tmp_path / "a").rglob("old_model.pt.json"))  # timings live in the sidecar


def test_unpinned_seed_is_trained_once_and_cached(tmp_path) -> None:
    ctx = pipeline.RunContext.create("smoke", cache_root=tmp_path)
    runtime = pipeline.Runtime(wandb=False, accelerator="cpu")
    first = pipeline.ensure_old_model(ctx, runtime, seed=7)
    mtime = first.path.stat().st_mtime_ns
    again = pipeline.ensure_old_model(ctx, runtime, seed=7)
    assert again == first and first.path.stat().st_mtime_ns == mtime
    assert first.identity not in load_benchmark("smoke").old_model.pinned.values()


def test_a_given_checkpoint_is_checked_against_the_spec(tmp_path, capsys) -> None:
    spec = load_benchmark("smoke")
    wrong = tmp_path / "wrong.pt"
    save_old_checkpoint(
        EmbeddingModel(spec.models.old_backbone, spec.models.embed_dim, 3), wrong, backbone="x", meta={}
    )
    payload = torch.load(wrong, weights_only=True)
    payload["backbone"] = spec.models.old_backbone
    torch.save(payload, wrong)
    code = main(
        [
            "train-old",
            "-b",
            "smoke",
            "--seeds",
            "0",
            "--checkpoint",
            str(wrong),
            "--cache-root",
            str(tmp_path),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "'num_classes' is 3, the benchmark expects" in err[0]


def test_a_pinned_model_trained_on_other_data_is_refused(tmp_path, monkeypatch) -> None:
    ctx = pipeline.RunContext.create("smoke", cache_root=tmp_path)
    pipeline.ensure_dataset(ctx)
    patch_pipeline(monkeypatch, "dataset_fingerprint", lambda ctx: "f" * 64)
    with pytest.raises(
        CheckpointError, match="trained on dataset_sha256 .* the benchmark's data has ffffffffffff"
    ):
        pipeline.ensure_old_model(ctx, pipeline.Runtime(wandb=False), seed=0)
