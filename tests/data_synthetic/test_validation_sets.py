"""Validation sets through the pipeline: ``load_validation_sets`` on the tiny dataset, the GLDv2 ``usage``
selector, and the seal that makes the test sets unreadable while tuning (``validation_only``), down to the
loaders' lowest level (``docs/evaluation.md`` §8.1)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from bctbench import pipeline
from bctbench.config import EvalSetSpec, load_benchmark
from bctbench.datamodules.gldv2 import load_gldv2_eval_set, read_retrieval_solution
from bctbench.datamodules.revisited import load_revisited_eval_set, read_gnd
from bctbench.datamodules.synthetic import SyntheticConfig, make_synthetic
from bctbench.errors import BCTBenchError, ConfigError, SealedTestSetError
from bctbench.evaluation.holdout import is_sealed


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    make_synthetic(root, name="synth_tiny", config=SyntheticConfig.tiny(), workers=1)
    return root


def _ctx(data_root: Path, tmp_path: Path, spec=None) -> pipeline.RunContext:
    spec = spec if spec is not None else load_benchmark("smoke")
    return pipeline.RunContext(spec, data_root, tmp_path / "cache", tmp_path / "results")


def _with_validation(spec, *sets: EvalSetSpec):
    return dataclasses.replace(spec, tuning=dataclasses.replace(spec.tuning, validation_sets=tuple(sets)))


def _one_line(err: pytest.ExceptionInfo, *needles: str) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, (needle, msg)
    return msg


def test_public_api():
    assert {"load_validation_sets", "validation_only"} <= set(pipeline.__all__)
    assert issubclass(SealedTestSetError, BCTBenchError)


def test_load_validation_sets_sizes(data_root, tmp_path):
    cfg = SyntheticConfig.tiny()
    ctx = _ctx(data_root, tmp_path)
    rev, gl = pipeline.load_validation_sets(ctx)
    assert (rev.name, rev.kind, gl.name, gl.kind) == ("rsynth_val", "revisited", "gldv2synth_val", "gldv2")
    assert len(rev.query_paths) == cfg.val_rev_landmarks * cfg.val_rev_queries_per_landmark
    assert len(rev.gallery_paths) == (
        cfg.val_rev_landmarks * cfg.val_rev_db_per_landmark
        + cfg.val_rev_distractor_landmarks * cfg.val_rev_views_per_distractor
        + cfg.val_rev_clutter
    )
    assert all(box is not None for box in rev.query_boxes)  # the spec's query crop, as for the test sets
    assert len(gl.query_paths) == cfg.val_gl_landmarks * cfg.val_gl_queries_per_landmark
    assert set(gl.usage) == {"public"}
    # validation and test images never coincide
    tests = pipeline.load_eval_sets(ctx)
    test_images = {p for es in tests for p in es.query_paths + es.gallery_paths}
    assert not test_images & set(rev.query_paths + rev.gallery_paths + gl.query_paths + gl.gallery_paths)


def test_usage_public_keeps_only_public_queries(data_root, tmp_path):
    """The real-data form: the public split of a GLDv2 test set is the validation set."""
    spec = load_benchmark("smoke")
    public = EvalSetSpec("gldv2synth_public", "gldv2", "synth_tiny/gldv2", usage="public")
    ctx = _ctx(data_root, tmp_path, _with_validation(spec, public))
    (es,) = pipeline.load_validation_sets(ctx)
    full = load_gldv2_eval_set(data_root / "synth_tiny/gldv2", name="gldv2synth")
    assert set(full.usage) == {"public", "private"}
    assert es.usage == ("public",) * full.usage.count("public") and es.protocols == ("public",)
    public_queries = {q for q, u in zip(full.query_paths, full.usage, strict=True) if u == "public"}
    assert set(es.query_paths) == public_queries and es.gallery_paths == full.gallery_paths


def test_no_validation_sets_is_a_one_line_config_error(data_root, tmp_path):
    ctx = _ctx(data_root, tmp_path, _with_validation(load_benchmark("smoke")))
    with pytest.raises(ConfigError) as err:
        pipeline.load_validation_sets(ctx)
    _one_line(err, "tuning.validation_sets", "smoke", "no validation sets")
    assert len(pipeline.load_eval_sets(ctx)) == 2  # the test sets load as before


def test_validation_only_seals_the_test_sets(data_root, tmp_path):
    ctx = _ctx(data_root, tmp_path)
    synth = data_root / "synth_tiny"
    with pipeline.validation_only(ctx):
        assert is_sealed()
        assert [es.name for es in pipeline.load_validation_sets(ctx)] == ["rsynth_val", "gldv2synth_val"]
        with pytest.raises(SealedTestSetError) as err:
            pipeline.load_eval_sets(ctx)
        _one_line(err, "test set 'rsynth' opened during tuning")
        # the loaders and the readers below them refuse too
        with pytest.raises(SealedTestSetError) as err:
            load_revisited_eval_set(synth, "rsynth")
        _one_line(err, "test set 'rsynth' opened during tuning")
        with pytest.raises(SealedTestSetError) as err:
            read_gnd(synth / "datasets/rsynth/gnd_rsynth.pkl")
        _one_line(err, "test set 'rsynth' opened during tuning")
        with pytest.raises(SealedTestSetError) as err:
            load_gldv2_eval_set(synth / "gldv2", name="anything")
        _one_line(err, "test set 'gldv2synth' opened during tuning")
        for usage in (None, "public", "private"):
            with pytest.raises(SealedTestSetError) as err:
                read_retrieval_solution(synth / "gldv2/retrieval_solution_v2.1.csv", usage=usage)
            _one_line(err, "test set 'gldv2synth' opened during tuning")
        # the validation sets' own files stay readable at every level
        read_gnd(synth / "datasets/rsynth_val/gnd_rsynth_val.pkl")
        read_retrieval_solution(synth / "gldv2_val/retrieval_solution_v2.1.csv")
    assert not is_sealed()
    # outside, everything loads again
    assert [es.name for es in pipeline.load_eval_sets(ctx)] == ["rsynth", "gldv2synth"]
    assert len(pipeline.load_validation_sets(ctx)) == 2


def test_seal_cannot_be_bypassed_by_a_link_or_another_path(data_root, tmp_path):
    ctx = _ctx(data_root, tmp_path)
    synth = data_root / "synth_tiny"
    link_root = tmp_path / "elsewhere"
    (link_root / "datasets" / "copy").mkdir(parents=True)
    os.symlink(synth / "datasets/rsynth/gnd_rsynth.pkl", link_root / "datasets/copy/gnd_copy.pkl")
    os.symlink(synth / "datasets/rsynth/jpg", link_root / "datasets/copy/jpg")
    undeclared = tmp_path / "undeclared"
    undeclared.mkdir()
    (undeclared / "gnd_x.pkl").write_bytes((synth / "datasets/rsynth_val/gnd_rsynth_val.pkl").read_bytes())
    with pipeline.validation_only(ctx):
        with pytest.raises(SealedTestSetError) as err:
            load_revisited_eval_set(link_root, "copy")  # a link to the test set's ground truth
        _one_line(err, "test set 'rsynth' opened during tuning")
        with pytest.raises(SealedTestSetError) as err:
            read_gnd(synth / "datasets" / ".." / "datasets" / "rsynth" / "gnd_rsynth.pkl")
        _one_line(err, "test set 'rsynth' opened during tuning")
        with pytest.raises(SealedTestSetError) as err:
            read_gnd(undeclared / "gnd_x.pkl")  # any file that is not a declared validation set
        _one_line(err, "opened during tuning", "rsynth_val, gldv2synth_val")
        # a seal nested inside keeps its own rules; leaving it restores the outer one
        no_val = _ctx(data_root, tmp_path, _with_validation(load_benchmark("smoke")))
        with pipeline.validation_only(no_val), pytest.raises(SealedTestSetError):
            pipeline.load_validation_sets(ctx)
        assert len(pipeline.load_validation_sets(ctx)) == 2
    assert len(load_revisited_eval_set(link_root, "copy").query_paths) == 12


def test_public_split_of_a_test_file_is_the_only_part_tuning_may_read(data_root, tmp_path):
    spec = load_benchmark("smoke")
    public = EvalSetSpec("gldv2synth_public", "gldv2", "synth_tiny/gldv2", usage="public")
    ctx = _ctx(data_root, tmp_path, _with_validation(spec, public))
    solution = data_root / "synth_tiny/gldv2/retrieval_solution_v2.1.csv"
    with pipeline.validation_only(ctx):
        (es,) = pipeline.load_validation_sets(ctx)
        assert set(es.usage) == {"public"}
        assert set(read_retrieval_solution(solution, usage="public")["usage"]) == {"public"}
        for usage in (None, "private"):
            with pytest.raises(SealedTestSetError) as err:
                read_retrieval_solution(solution, usage=usage)
            _one_line(err, "test set 'gldv2synth' opened during tuning")
        with pytest.raises(SealedTestSetError):
            pipeline.load_eval_sets(ctx)
