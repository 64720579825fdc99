"""CLI behaviour: one-line errors with exit status 2, and a real end-to-end smoke run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bctbench.cli import main
from bctbench.results import read_result, result_path
from tests.conftest import patch_pipeline


def _run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("methods", "make-synthetic", "prepare-data", "train-old", "run", "leaderboard", "evaluate"):
        assert cmd in out


def test_methods_lists_papers(capsys):
    code, out, _ = _run(capsys, "methods")
    assert code == 0
    assert "bct" in out and "independent" in out and "CVPR 2020" in out


def test_unknown_method_is_one_line_error(capsys):
    code, _, err = _run(capsys, "run", "--benchmark", "smoke", "--method", "nosuch", "--no-wandb")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown method 'nosuch'")
    assert "bct" in lines[0] and "independent" in lines[0]


def test_unknown_benchmark_is_one_line_error(capsys):
    code, _, err = _run(capsys, "run", "--benchmark", "nosuch", "--method", "bct")
    assert (
        code == 2
        and err.startswith("error: unknown benchmark 'nosuch'")
        and len(err.strip().splitlines()) == 1
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("wieght=2", "unknown key for method 'bct'"),
        ("epochs=3", "protocol key"),
        ("image_size=32", "protocol key"),
    ],
)
def test_bad_overrides_are_rejected_before_any_work(capsys, override, message, tmp_path):
    code, _, err = _run(
        capsys,
        "run",
        "--benchmark",
        "smoke",
        "--method",
        "bct",
        "--set",
        override,
        "--data-root",
        str(tmp_path / "never"),
    )
    assert code == 2 and message in err
    assert not (tmp_path / "never").exists(), "nothing is generated for a rejected command"


def test_missing_old_checkpoint_is_a_clear_error(capsys, tmp_path):
    code, _, err = _run(capsys, "train-old", "--benchmark", "smoke", "--checkpoint", str(tmp_path / "x.pt"))
    assert code == 2 and "old-model checkpoint not found" in err


def test_leaderboard_without_results_is_a_clear_error(capsys, tmp_path):
    code, _, err = _run(capsys, "leaderboard", "--benchmark", "smoke", "--results-root", str(tmp_path))
    assert code == 2 and err.startswith("error:")


@pytest.fixture(scope="module")
def smoke_roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("smoke")
    return {
        "--data-root": str(base / "data"),
        "--cache-root": str(base / "cache"),
        "--results-root": str(base / "results"),
    }


def _roots(roots):
    return [x for kv in roots.items() for x in kv]


def test_smoke_run_end_to_end(capsys, smoke_roots):
    code, out, err = _run(
        capsys,
        "run",
        "--benchmark",
        "smoke",
        "--method",
        "independent",
        "--no-wandb",
        "--quiet",
        *_roots(smoke_roots),
    )
    assert code == 0, err
    assert "| independent" in out and "| old→old" in out  # the leaderboard is printed
    result = read_result(result_path(smoke_roots["--results-root"], "smoke", "independent", 0))
    assert result.benchmark_sha256 and result.old_identity and result.split_sha256
    assert result.per_query["rsynth"]["groups"] and result.hparams_digest == "default"
    for key in ("cpu_model", "torch_threads", "torchvision", "pillow", "num_workers"):
        assert key in result.env
    assert result.env.get("torch") and "git" in result.to_dict()
    assert len(result.eval_variants["dataset_sha256"]) == 64
    keys = {(r["eval_set"], r["protocol"], r["query_model"], r["gallery_model"]) for r in result.metrics}
    for es, protocol in (
        ("rsynth", "medium"),
        ("rsynth", "easy"),
        ("rsynth", "hard"),
        ("gldv2synth", "private"),
    ):
        for pair in (("old", "old"), ("new", "old"), ("new", "new"), ("old", "new")):
            assert (es, protocol, *pair) in keys
    curve = result.curves["backfill"][0]
    assert curve["fractions"][0] == 0.0 and curve["fractions"][-1] == 1.0 and len(curve["fractions"]) == 11
    cross = result.value("rsynth", "medium", "new", "old", "mAP")
    self_ = result.value("rsynth", "medium", "new", "new", "mAP")
    rsynth_medium = [
        c for c in result.curves["backfill"] if c["eval_set"] == "rsynth" and c["protocol"] == "medium"
    ]
    assert rsynth_medium[0]["values"][0] == pytest.approx(cross) and rsynth_medium[0]["values"][
        -1
    ] == pytest.approx(self_)


def test_failed_run_leaves_earlier_results_intact(capsys, smoke_roots):
    path = result_path(smoke_roots["--results-root"], "smoke", "independent", 0)
    before = path.read_bytes()
    code, _, err = _run(
        capsys,
        "run",
        "--benchmark",
        "smoke",
        "--method",
        "independent",
        "--set",
        "nope=1",
        *_roots(smoke_roots),
    )
    assert code == 2 and path.read_bytes() == before
    json.loads(before)


def test_second_method_reuses_cached_old_model_and_leaderboard_renders(capsys, smoke_roots):
    code, out, err = _run(
        capsys,
        "run",
        "--benchmark",
        "smoke",
        "--method",
        "bct",
        "--no-wandb",
        "--quiet",
        *_roots(smoke_roots),
    )
    assert code == 0, err
    a = read_result(result_path(smoke_roots["--results-root"], "smoke", "independent", 0))
    b = read_result(result_path(smoke_roots["--results-root"], "smoke", "bct", 0))
    assert a.old_identity == b.old_identity
    old_old = [r["value"] for r in a.metrics if (r["query_model"], r["gallery_model"]) == ("old", "old")]
    assert old_old == [
        r["value"] for r in b.metrics if (r["query_model"], r["gallery_model"]) == ("old", "old")
    ]
    code, out, _ = _run(
        capsys,
        "leaderboard",
        "--benchmark",
        "smoke",
        "--results-root",
        smoke_roots["--results-root"],
        "--format",
        "csv",
    )
    assert code == 0 and "bct" in out and "independent" in out


def test_dataset_regenerated_during_a_run_is_an_error(capsys, smoke_roots, monkeypatch):
    from bctbench import pipeline

    real = pipeline.dataset_fingerprint
    calls = iter(range(100))
    patch_pipeline(monkeypatch, "dataset_fingerprint", lambda ctx: f"{real(ctx)}-{next(calls)}")
    code, _, err = _run(
        capsys,
        "run",
        "--benchmark",
        "smoke",
        "--method",
        "independent",
        "--seed",
        "7",
        "--no-wandb",
        "--quiet",
        *_roots(smoke_roots),
    )
    assert code == 2 and "regenerated while this run used it" in err
    assert not result_path(smoke_roots["--results-root"], "smoke", "independent", 7).exists()


def test_reevaluate_rescores_a_finished_run_without_retraining(capsys, smoke_roots):
    path = result_path(smoke_roots["--results-root"], "smoke", "bct", 0)
    before = read_result(path)
    code, out, err = _run(
        capsys, "reevaluate", "--benchmark", "smoke", "--methods", "bct", "--no-wandb", *_roots(smoke_roots)
    )
    assert code == 0, err
    after = read_result(path)
    assert after.metrics == before.metrics  # same checkpoint, same protocol: identical numbers
    assert after.timings["fit"] == before.timings["fit"] and after.git == before.git
    assert after.eval_variants["reevaluated"]["trained_with_benchmark_sha256"] == before.benchmark_sha256
    assert {c["mode"] for c in after.curves["backfill"]} == {"mixed", "merge"}
    assert after.curves["backfill_mode"] == "mixed"

    # a run trained under another recipe is refused, and its result is left as it was
    config = Path(smoke_roots["--cache-root"]) / "runs" / "smoke" / "bct" / "seed0" / "config.json"
    saved = config.read_text()
    data = json.loads(saved)
    data["spec"]["training"]["epochs"] += 1
    config.write_text(json.dumps(data))
    try:
        code, _, err = _run(
            capsys, "reevaluate", "--benchmark", "smoke", "--methods", "bct", *_roots(smoke_roots)
        )
    finally:
        config.write_text(saved)
    assert code == 1 and "training changed" in err and "run it again" in err
    assert read_result(path).to_dict() == after.to_dict()


def test_reevaluate_refuses_a_checkpoint_that_is_not_the_results_model(capsys, smoke_roots):
    path = result_path(smoke_roots["--results-root"], "smoke", "bct", 0)
    saved = path.read_text()
    data = json.loads(saved)
    assert data["eval_variants"]["encoders"]["new"].startswith("bct:")
    data["eval_variants"]["encoders"]["new"] = "bct:0000"
    path.write_text(json.dumps(data))
    try:
        code, _, err = _run(
            capsys, "reevaluate", "--benchmark", "smoke", "--methods", "bct", *_roots(smoke_roots)
        )
        assert code == 1 and "are not those the result was computed with" in err
        del data["eval_variants"]["encoders"]  # an older result: its new→new rows must reproduce
        data["metrics"] = [
            {**r, "value": 0.5} if (r["query_model"], r["gallery_model"]) == ("new", "new") else r
            for r in data["metrics"]
        ]
        path.write_text(json.dumps(data))
        code, _, err = _run(
            capsys, "reevaluate", "--benchmark", "smoke", "--methods", "bct", *_roots(smoke_roots)
        )
        assert code == 1 and "does not reproduce the result's new→new metrics" in err
    finally:
        path.write_text(saved)


def test_fresh_run_replaces_a_previous_runs_checkpoints(tmp_path):
    from bctbench.pipeline.trainer import _resume_path

    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    (ckpts / "last.ckpt").write_text("previous run")
    assert _resume_path(tmp_path, resume=True) == str(ckpts / "last.ckpt")
    assert ckpts.is_dir()
    assert _resume_path(tmp_path, resume=False) is None
    assert not ckpts.exists()  # Lightning would otherwise write last-v1.ckpt and leave a stale last.ckpt
    assert _resume_path(tmp_path, resume=True) is None
