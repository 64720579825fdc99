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
        assert old.meta["seed"] == seed and old.meta["benchmark"] == (spec.old_model.pinned_from or name)
        assert len(old.meta["dataset_sha256"]) == 64 and len(old.meta["split_sha256"]) == 64
    assert len(set(spec.old_model.pinned.values())) == len(spec.old_model.pinned)  # a model per seed


SHARING = [b for b in PINNED if load_benchmark(b).old_model.pinned_from]


def test_the_extended_backbone_pairs_share_the_old_models_of_their_allocation() -> None:
    assert {"synth_class30to100_w16to24", "synth_data30to100_w16to24"} <= set(SHARING)


@pytest.mark.parametrize("name", SHARING)
def test_a_sharing_benchmark_pins_its_sources_models_and_differs_only_in_the_new_model(name: str) -> None:
    spec = load_benchmark(name)
    source = load_benchmark(spec.old_model.pinned_from)
    assert spec.old_model.pinned.items() <= source.old_model.pinned.items()
    ctx, src = pipeline.RunContext.create(name), pipeline.RunContext.create(source.name)
    assert ctx.old_key() == src.old_key()  # everything the old model depends on
    assert spec.data == source.data and spec.models.old_backbone == source.models.old_backbone
    assert spec.models.new_backbone != source.models.new_backbone
    assert spec.tuning.preset_source == source.name


def test_pinning_a_sharing_benchmark_is_refused_in_one_line(capsys) -> None:
    assert main(["train-old", "--pin", "-b", SHARING[0], "--seeds", "0", "--no-wandb"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pin them there" in err


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


def test_a_wider_new_backbone_runs_against_the_shared_old_model(tmp_path) -> None:
    """The extended-backbone path end to end on the smoke world: a spec with another new backbone and
    ``pinned_from: smoke`` trains, and its result names smoke's pinned old model of that seed."""
    import json
    import shutil

    from bctbench.config import BENCHMARKS_DIR

    folder = tmp_path / "specs"
    shutil.copytree(BENCHMARKS_DIR / "old_models" / "smoke", folder / "old_models" / "smoke")
    text = (BENCHMARKS_DIR / "smoke.yaml").read_text()
    text = text.replace("name: smoke\n", "name: smoke_wide\n", 1)
    text = text.replace("  new_backbone: tinycnn_w8\n", "  new_backbone: tinycnn_w12\n", 1)
    text = text.replace("  pinned:  #", "  pinned_from: smoke\n  pinned:  #", 1)
    assert "pinned_from: smoke" in text and "tinycnn_w12" in text
    (folder / "smoke_wide.yaml").write_text(text)
    results = tmp_path / "results"
    argv = ["run", "-b", str(folder / "smoke_wide.yaml"), "-m", "l2", "--seed", "1", "--no-wandb", "--quiet"]
    assert main([*argv, "--results-root", str(results), "--cache-root", str(tmp_path / "cache")]) == 0
    (path,) = results.rglob("seed1.json")
    result = json.loads(path.read_text())
    assert result["benchmark"] == "smoke_wide"
    assert result["old_identity"] == load_benchmark("smoke").old_model.pinned[1]
