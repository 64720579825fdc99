"""Sequential upgrade benchmark end to end on the tiny embedded data: specs, the generation chain (each step's
frozen old model is the previous step's new model and never changes), the compatibility matrix in the
RunResult (diagonal = self-tests, AC / AA = multi_step_metrics), generation caching and the sequential
leaderboard through the CLI."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from bctbench import pipeline
from bctbench.cli import main
from bctbench.config import load_benchmark
from bctbench.errors import BCTBenchError
from bctbench.evaluation.metrics import multi_step_metrics
from bctbench.method import Encoder, module_digest
from bctbench.old_model import load_old_model
from bctbench.registry import get_method
from bctbench.results import read_result, result_path

BENCH = "smoke_seq"
STEPS = 3


def test_sequential_specs_load_and_follow_their_single_step_recipes():
    for name, base, allocation in (
        ("smoke_seq", "smoke", "seq_data10to30to100"),
        ("synth_seq_data10to30to100", "synth_data30to100", "seq_data10to30to100"),
        ("synth_seq_class10to30to100", "synth_class30to100", "seq_class10to30to100"),
    ):
        spec, ref = load_benchmark(name), load_benchmark(base)
        assert spec.sequential_steps == STEPS and spec.data.allocation == allocation
        assert dataclasses.replace(spec.data, allocation=ref.data.allocation) == ref.data
        assert (spec.models, spec.training, spec.old_model, spec.evaluation, spec.seeds) == (
            ref.models,
            ref.training,
            dataclasses.replace(ref.old_model, pinned=spec.old_model.pinned),  # each pins its own g0
            ref.evaluation,
            ref.seeds,
        )
    tiny = load_benchmark("smoke_seq")
    assert tiny.training.epochs == 1 and tiny.training.num_workers == 0 and tiny.data.synthetic_size == "tiny"


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("seq")
    return {"--data-root": base / "data", "--cache-root": base / "cache", "--results-root": base / "results"}


def _argv(roots):
    return [x for k, v in roots.items() for x in (k, str(v))]


@pytest.fixture(scope="module")
def ctx(roots):
    return pipeline.RunContext.create(
        BENCH, roots["--data-root"], roots["--cache-root"], roots["--results-root"]
    )


@pytest.fixture(scope="module")
def result(roots, ctx):
    code = main(["run", "--benchmark", BENCH, "--method", "bct", "--no-wandb", "--quiet", *_argv(roots)])
    assert code == 0
    return read_result(result_path(roots["--results-root"], BENCH, "bct", 0))


def _matrix(result, es, protocol, metric):
    m = np.full((STEPS, STEPS), np.nan)
    for r in result.metrics:
        if (r["eval_set"], r["protocol"], r["metric"]) == (es, protocol, metric):
            m[int(r["query_model"][1:]), int(r["gallery_model"][1:])] = r["value"]
    return m


def test_result_carries_the_full_lower_triangular_matrix(result):
    assert result.benchmark == BENCH and result.method == "bct"
    models = {(r["query_model"], r["gallery_model"]) for r in result.metrics}
    assert models == {(f"g{i}", f"g{j}") for i in range(STEPS) for j in range(i + 1)}
    assert not result.curves.get("backfill")
    seq = result.curves["sequential"]
    assert seq["steps"] == STEPS and len(seq["generations"]) == STEPS
    assert {(x["eval_set"], x["protocol"], x["metric"]) for x in seq["matrices"]} == {
        (r["eval_set"], r["protocol"], r["metric"]) for r in result.metrics
    }
    for x in seq["matrices"]:
        stored = np.array([[np.nan if v is None else v for v in row] for row in x["matrix"]])
        assert stored.shape == (STEPS, STEPS)
        m = _matrix(result, x["eval_set"], x["protocol"], x["metric"])
        np.testing.assert_array_equal(np.isnan(stored), np.isnan(m))
        np.testing.assert_allclose(np.nan_to_num(stored), np.nan_to_num(m))
        assert np.isnan(m[np.triu_indices(STEPS, k=1)]).all()
        assert not np.isnan(m[np.tril_indices(STEPS)]).any()
        expected = multi_step_metrics(m)
        assert x["AC"] == pytest.approx(expected["AC"]) and x["AA"] == pytest.approx(expected["AA"])


def test_generation_chain_old_is_previous_new_and_stays_frozen(result, ctx):
    gens = result.curves["sequential"]["generations"]
    assert gens[0]["identity"] == result.old_identity
    for k in range(1, STEPS):
        g, prev = gens[k], gens[k - 1]
        assert g["step"] == k and g["method"] == "bct"
        assert g["old_identity"] == prev["identity"], "the old model of step k is generation k-1's checkpoint"
        assert g["old_digest_before"] == g["old_digest_after"], "the frozen old model changed in training"
        prev_model = load_old_model(prev["path"], prev["identity"]).model
        assert module_digest(prev_model) == g["old_digest_before"]
        assert load_old_model(g["path"]).identity == g["identity"]
        assert module_digest(load_old_model(g["path"]).model) == g["new_digest"]  # saved = trained
        if k > 1:
            assert prev["new_digest"] == g["old_digest_before"]
    assert len({g["identity"] for g in gens}) == STEPS


def test_matrix_entries_equal_a_plain_two_model_evaluation(result, ctx):
    """C[2][1], C[2][2], C[1][1] from the ordinary old/new evaluator with g1 as "old" and g2 as "new"."""
    gens = result.curves["sequential"]["generations"]
    enc = {}
    for name, g in (("old", gens[1]), ("new", gens[2])):
        emb = load_old_model(g["path"], g["identity"]).model.embedder
        enc[name] = Encoder(emb, f"check:{g['identity']}")
    runtime = pipeline.Runtime(wandb=False, accelerator="cpu")
    report = pipeline.build_evaluator(ctx, runtime, pairs=["old-old", "new-old", "new-new"]).evaluate(enc)
    for es, (protocol, metric) in result.primary.items():
        m = _matrix(result, es, protocol, metric)
        assert report.value(es, protocol, "old-old", metric) == pytest.approx(m[1, 1], abs=1e-9)
        assert report.value(es, protocol, "new-old", metric) == pytest.approx(m[2, 1], abs=1e-9)
        assert report.value(es, protocol, "new-new", metric) == pytest.approx(m[2, 2], abs=1e-9)


def test_rerun_reuses_cached_generations(result, ctx):
    gens = result.curves["sequential"]["generations"]
    mtimes = [Path(g["path"]).stat().st_mtime_ns for g in gens]
    again = pipeline.run(ctx, "bct", seed=0, runtime=pipeline.Runtime(wandb=False, accelerator="cpu"))
    assert [g["identity"] for g in again.curves["sequential"]["generations"]] == [g["identity"] for g in gens]
    assert [Path(g["path"]).stat().st_mtime_ns for g in gens] == mtimes


def test_a_method_that_changes_its_old_model_is_refused(result, ctx):
    bct = get_method("bct")

    class Mutating(bct):  # test-only: breaks the frozen-old contract on purpose
        name = "mutating_test"

        def compatibility_loss(self, batch, new, old):
            with torch.no_grad():
                next(self.old.parameters()).add_(1.0)
            return super().compatibility_loss(batch, new, old)

    gens = result.curves["sequential"]["generations"]
    old_ref = pipeline.OldModelRef(Path(gens[0]["path"]), gens[0]["identity"])
    with pytest.raises(BCTBenchError, match="frozen generation 0 changed"):
        pipeline.train_generation(
            ctx,
            Mutating,
            {},
            seed=0,
            step=1,
            old_ref=old_ref,
            runtime=pipeline.Runtime(wandb=False, accelerator="cpu"),
        )
    assert load_old_model(gens[0]["path"]).identity == gens[0]["identity"]


def test_sequential_leaderboard_through_the_cli(result, roots, capsys):
    capsys.readouterr()
    code = main(["leaderboard", "--benchmark", BENCH, "--results-root", str(roots["--results-root"])])
    out = capsys.readouterr().out
    assert code == 0
    assert "| method | g0→g0 | g1→g0 | g1→g1 | g2→g0 | g2→g1 | g2→g2 | AC | AA | flags |" in out
    assert "| bct (yours) |" in out and "**rsynth** (medium, mAP)" in out  # no reference results of smoke_seq


def test_sequential_run_logs_each_generation_and_the_result_to_wandb_offline(
    roots, ctx, tmp_path, monkeypatch
):
    from tests.results.test_tracking import _records, _summary

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    runtime = pipeline.Runtime(wandb=True, accelerator="cpu")
    result = pipeline.run(ctx, "bct", seed=5, runtime=runtime, preset="old_classes")  # a named preset row
    runs = sorted((ctx.results_root.parent / "wandb-runs" / "wandb").glob("offline-run-*"))
    assert len(runs) == STEPS  # g1, g2 training runs and the result run
    for run_dir in runs:
        _summary(run_dir)  # waits until wandb-core has flushed the run's log
    by_name = {
        r.run.display_name: run_dir
        for run_dir in runs
        for r in _records(next(run_dir.glob("*.wandb")))
        if r.WhichOneof("record_type") == "run"
    }  # run folders are named by start second and a random id: no reliable order
    label = "bct:old_classes"  # every generation's run carries the preset's row name
    assert sorted(by_name) == sorted([f"{label}/seed5/g1", f"{label}/seed5/g2", f"{label}/seed5"])
    summary = _summary(by_name[f"{label}/seed5"])
    es, (protocol, metric) = next(iter(result.primary.items()))
    mat = next(
        m for m in result.curves["sequential"]["matrices"] if (m["eval_set"], m["protocol"]) == (es, protocol)
    )
    assert summary[f"test/{es}/{protocol}/sequential-AA/{metric}"] == pytest.approx(mat["AA"])
