"""Named presets: paper variants declared by methods, tuned-preset files, labels and the refusals."""

from __future__ import annotations

import pytest
import yaml

from bctbench import presets
from bctbench.config import load_benchmark
from bctbench.errors import ConfigError
from bctbench.pipeline import method_parameters
from bctbench.registry import get_method, list_methods
from bctbench.results import run_label


def test_every_declared_variant_names_hyperparameters_only():
    declared = 0
    for name in list_methods():
        cls = get_method(name)
        params = method_parameters(cls)
        for variant, values in (getattr(cls, "variants", None) or {}).items():
            assert presets.NAME_RE.match(variant) and variant != presets.TUNED
            assert set(values) <= set(params), (name, variant)
            assert any(params[k] != v for k, v in values.items()), (name, variant, "equals the defaults")
            declared += 1
    assert declared >= 4  # bct old_classes, lce advbct_reimpl, unibct advbct_table, advbct fixed


def test_every_search_space_covers_hyperparameters_with_several_values():
    for name in list_methods():
        cls = get_method(name)
        space = cls.search_space()
        params = method_parameters(cls)
        assert set(space) <= set(params), name
        assert all(len(v) >= 2 and len(set(map(repr, v))) == len(v) for v in space.values()), name
        if name != "independent":
            assert space, f"{name} declares no search space"


def test_resolve_variant_and_refusals(tmp_path, monkeypatch):
    spec = load_benchmark("smoke")
    bct = get_method("bct")
    assert presets.resolve(spec, bct, "old_classes") == {"new_class_rows": "none"}
    with pytest.raises(ConfigError, match="has no preset 'nosuch' \\(available: .*old_classes"):
        presets.resolve(spec, bct, "nosuch")
    with pytest.raises(ConfigError, match="invalid preset name"):
        presets.resolve(spec, bct, "Bad Name")
    monkeypatch.setattr(presets, "presets_dir", lambda: tmp_path)  # no tuned presets at all
    with pytest.raises(ConfigError, match="has no tuned preset for benchmark 'smoke'"):
        presets.resolve(spec, get_method("l2"), "tuned")


def _bct_preset(tmp_path, monkeypatch, **fields):
    """A smoke-benchmark tuned preset file of bct under ``tmp_path`` (``fields`` override the defaults)."""
    monkeypatch.setattr(presets, "presets_dir", lambda: tmp_path)
    path = presets.preset_file("smoke", "bct")
    path.parent.mkdir(parents=True)
    doc = {
        "format": presets.FORMAT,
        "method": "bct",
        "benchmark": "smoke",
        "chosen": {"weight": 2.0},
        "trials": [{"trial": 0}],
        **fields,
    }
    path.write_text(yaml.safe_dump(doc))
    return path, doc


def test_tuned_file_is_read_and_checked(tmp_path, monkeypatch):
    spec = load_benchmark("smoke")
    bct = get_method("bct")
    path, doc = _bct_preset(
        tmp_path, monkeypatch, complete=False, identities={"benchmark_sha256": spec.sha256}
    )
    with pytest.raises(ConfigError, match="tuning is not complete \\(1 trials so far\\)"):
        presets.resolve(spec, bct, "tuned")
    path.write_text(yaml.safe_dump(doc | {"complete": True}))
    assert presets.resolve(spec, bct, "tuned") == {"weight": 2.0}
    assert presets.available(spec, bct)[0] == "tuned"
    path.write_text(yaml.safe_dump(doc | {"complete": True, "identities": {"benchmark_sha256": "0" * 64}}))
    with pytest.raises(ConfigError, match="tuned under another version of benchmark 'smoke'"):
        presets.resolve(spec, bct, "tuned")
    path.write_text(yaml.safe_dump(doc | {"complete": True, "chosen": {"nosuch": 1}}))
    with pytest.raises(ConfigError, match="'nosuch' is not a hyperparameter"):
        presets.resolve(spec, bct, "tuned")
    path.write_text("format: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        presets.resolve(spec, bct, "tuned")


def test_labels_and_cli_refusal(capsys):
    from bctbench.cli import main

    assert run_label("bct", "default", "old_classes") == "bct:old_classes"
    assert run_label("bct", "1a2b3c4d") == "bct@1a2b3c4d"
    code = main(
        ["run", "-b", "smoke", "-m", "bct", "--preset", "old_classes", "--set", "weight=2", "--no-wandb"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "cannot be combined" in err and len(err.strip().splitlines()) == 1


def test_pinning_more_seeds_keeps_a_tuned_preset_valid_other_changes_do_not(tmp_path, monkeypatch):
    import dataclasses

    spec = load_benchmark("smoke")
    bct = get_method("bct")
    identities = {"benchmark_sha256": "0" * 64, "tuning_sha256": spec.tuning_sha256}
    _bct_preset(tmp_path, monkeypatch, complete=True, identities=identities)
    tuning_seed = spec.tuning.seed
    more = dataclasses.replace(
        spec,
        seeds=(*spec.seeds, 7),
        old_model=dataclasses.replace(spec.old_model, pinned={**spec.old_model.pinned, 7: "a" * 64}),
    )
    assert more.sha256 != spec.sha256 and more.tuning_sha256 == spec.tuning_sha256
    assert presets.resolve(more, bct, "tuned") == {"weight": 2.0}
    repinned = dataclasses.replace(
        spec,
        old_model=dataclasses.replace(
            spec.old_model, pinned={**spec.old_model.pinned, tuning_seed: "b" * 64}
        ),
    )
    longer = dataclasses.replace(
        spec, training=dataclasses.replace(spec.training, epochs=spec.training.epochs + 1)
    )
    for changed in (repinned, longer):
        assert changed.tuning_sha256 != spec.tuning_sha256
        with pytest.raises(ConfigError, match="tuning_sha256"):
            presets.resolve(changed, bct, "tuned")
