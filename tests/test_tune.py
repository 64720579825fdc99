"""`bctbench tune`: trials from the search space with the spec's budget, scored on validation only (the test
sets are sealed and never opened), a resumable preset file, and `run --preset tuned` using it."""

from __future__ import annotations

import pytest
import yaml

from bctbench import pipeline, presets
from bctbench.errors import SealedTestSetError
from bctbench.pipeline.tuning import choose, plan_trials, score_trial, tune

RUNTIME = pipeline.Runtime(wandb=False, accelerator="cpu")


def test_plan_trials_is_seeded_distinct_and_starts_with_the_defaults():
    space = {"weight": [0.5, 1.0, 2.0], "margin": [0.1, 0.2]}
    plan = plan_trials(space, 4, 0, "m")
    assert plan[0] == {} and len(plan) == 4
    assert len({tuple(sorted(p.items())) for p in plan[1:]}) == 3
    assert plan == plan_trials(space, 4, 0, "m") and plan != plan_trials(space, 4, 1, "m")
    assert len(plan_trials(space, 50, 0, "m")) == 1 + 6  # the whole grid, no more
    with_defaults = plan_trials(space, 50, 0, "m", {"weight": 1.0, "margin": 0.2})
    assert len(with_defaults) == 1 + 5 and {"weight": 1.0, "margin": 0.2} not in with_defaults
    assert plan_trials({}, 5, 0, "independent") == [{}]


def test_score_needs_compatibility_on_every_validation_set():
    primary = {"a": ["medium", "mAP"], "b": ["public", "mAP@100"]}
    rows = [
        {
            "eval_set": es,
            "protocol": primary[es][0],
            "metric": primary[es][1],
            "query_model": q,
            "gallery_model": g,
            "value": v,
        }
        for es, vals in {"a": (0.30, 0.35, 0.50), "b": (0.20, 0.19, 0.40)}.items()
        for (q, g), v in zip((("old", "old"), ("new", "old"), ("new", "new")), vals, strict=True)
    ]
    sc = score_trial(rows, primary, {"a": 0.5, "b": 0.4})
    assert sc["compatible"] is False  # b: cross 0.19 < old->old 0.20
    assert sc["P_up"] == pytest.approx(50.0) and 0 < sc["P_1"] < 100


def test_choose_prefers_compatible_trials_then_p1():
    def t(i, p1, ok):
        return {"trial": i, "hparams": {"w": i}, "scores": {"P_1": p1, "compatible": ok}}

    best, why = choose([t(0, 40.0, False), t(1, 45.0, False), t(2, 41.0, True), t(3, 41.0, True)])
    assert best["trial"] == 2 and "among compatible" in why  # compatible first; ties: the earlier trial
    best, why = choose([t(0, 40.0, False), t(1, 45.0, False)])
    assert best["trial"] == 1 and "no trial met" in why
    assert choose([t(0, 1.0, False), t(1, 9.0, True)], paragon=True)[0]["trial"] == 0


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    base = tmp_path_factory.mktemp("tune")
    ctx = pipeline.RunContext.create("smoke", base / "data", base / "cache", base / "results")
    out = base / "presets" / "bct.yaml"
    return ctx, out, base


def test_tune_never_opens_a_test_set_and_writes_a_complete_log(tuned, monkeypatch, tmp_path):
    ctx, out, base = tuned
    monkeypatch.setattr(presets, "presets_dir", lambda: base / "presets-dir")  # the paragon's file goes here
    opened = []
    import bctbench.pipeline.dataset as ds

    real = ds.load_eval_sets

    def spy(c):
        opened.append("test")
        return real(c)  # sealed: raises inside tune

    monkeypatch.setattr(ds, "load_eval_sets", spy)
    doc = tune(ctx, "bct", runtime=RUNTIME, out_path=out)
    assert doc["complete"] and doc["budget"] == 2 and len(doc["trials"]) == 2
    assert doc["trials"][0]["hparams"] == {} and doc["trials"][1]["hparams"]
    assert set(doc["trials"][0]["scores"]["sets"]) == {"rsynth_val", "gldv2synth_val"}
    assert doc["chosen"] == doc["trials"][doc["chosen_trial"]]["hparams"]
    assert opened == []  # tuning never asked for the test sets
    on_disk = yaml.safe_load(out.read_text())
    assert on_disk["chosen"] == doc["chosen"] and on_disk["identities"]["old_identity"]
    paragon = yaml.safe_load((base / "presets-dir" / "smoke" / "independent.yaml").read_text())
    assert paragon["complete"] and len(paragon["trials"]) == 1


def test_test_sets_are_sealed_while_tuning(tuned):
    ctx, _, _ = tuned
    with pipeline.validation_only(ctx), pytest.raises(SealedTestSetError, match="opened during tuning"):
        pipeline.load_eval_sets(ctx)


def test_tune_resumes_from_its_log_without_training(tuned, monkeypatch):
    ctx, out, base = tuned
    monkeypatch.setattr(presets, "presets_dir", lambda: base / "presets-dir")
    import bctbench.pipeline.tuning as tuning

    def no_training(*a, **k):
        raise AssertionError("a recorded trial was trained again")

    monkeypatch.setattr(tuning, "_validation_run", no_training)
    before = out.read_text()
    doc = tune(ctx, "bct", runtime=RUNTIME, out_path=out)
    assert doc["complete"] and out.read_text() == before


def test_run_with_the_tuned_preset(tuned, monkeypatch):
    ctx, out, base = tuned
    (base / "presets-dir" / "smoke").mkdir(parents=True, exist_ok=True)
    (base / "presets-dir" / "smoke" / "bct.yaml").write_text(out.read_text())
    monkeypatch.setattr(presets, "presets_dir", lambda: base / "presets-dir")
    res = pipeline.run(ctx, "bct", seed=0, runtime=RUNTIME, preset="tuned")
    assert res.label == "bct:tuned" and res.preset == "tuned"
    chosen = yaml.safe_load(out.read_text())["chosen"]
    assert all(res.method_hparams[k] == v for k, v in chosen.items())
