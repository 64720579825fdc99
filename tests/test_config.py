import dataclasses

import pytest

from bctbench.config import (
    BenchmarkSpec,
    list_benchmarks,
    load_benchmark,
    parse_set_options,
    spec_from_dict,
    split_overrides,
)
from bctbench.errors import ConfigError

EXPECTED = {
    "smoke",
    "synth_class30to100",
    "synth_data30to100",
    "gldv2_data30to100_r18",
    "gldv2_class30to100_r18",
    "gldv2_data30to100_r18to50",
    "gldv2_class30to100_r18to50",
    "gldv2_openclass30to70_r18",
    "gldv2_seq_data10to30to100_r18",
}


def test_every_shipped_benchmark_loads_and_is_complete():
    names = set(list_benchmarks())
    assert EXPECTED <= names
    for name in names:
        spec = load_benchmark(name)
        assert isinstance(spec, BenchmarkSpec) and spec.name == name
        assert len(spec.sha256) == 64
        # every protocol group of docs/architecture.md §5 is pinned
        assert spec.data.allocation and spec.models.embed_dim and spec.training.epochs
        assert spec.training.image_size and spec.training.resize and spec.evaluation.eval_sets
        assert spec.old_model.epochs > 0


def test_real_benchmarks_pin_the_advbct_recipe():
    spec = load_benchmark("gldv2_class30to100_r18to50")
    assert (spec.models.old_backbone, spec.models.new_backbone, spec.models.embed_dim) == (
        "resnet18",
        "resnet50",
        256,
    )
    assert spec.training.optimizer.milestones == (5, 10, 20) and spec.training.epochs == 30
    assert {e.name for e in spec.evaluation.eval_sets} == {"roxford5k", "rparis6k", "gldv2"}


def _raw(name="synth_class30to100"):
    return load_benchmark(name).to_dict()


def test_unknown_and_missing_keys_are_named():
    raw = _raw()
    raw["training"]["lr"] = 0.1
    with pytest.raises(ConfigError, match=r"training: unknown key 'lr'"):
        spec_from_dict(raw, "x.yaml")
    raw = _raw()
    del raw["models"]["embed_dim"]
    with pytest.raises(ConfigError, match=r"x.yaml: models: missing required key 'embed_dim'"):
        spec_from_dict(raw, "x.yaml")


def test_bad_values_are_rejected():
    raw = _raw()
    raw["data"]["allocation"] = "class50to100"
    with pytest.raises(ConfigError, match="data.allocation"):
        spec_from_dict(raw, "x.yaml")


def test_invalid_yaml_names_file_and_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: bad\ndata: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+: invalid YAML"):
        load_benchmark(p)


def test_unknown_benchmark_lists_available():
    with pytest.raises(ConfigError, match="available: .*smoke"):
        load_benchmark("nope")


def test_sha256_changes_with_protocol():
    a = load_benchmark("synth_class30to100")
    b = dataclasses.replace(a, training=dataclasses.replace(a.training, epochs=a.training.epochs + 1))
    assert a.sha256 != b.sha256


def test_overrides_split_method_runtime_and_protocol():
    params = {"weight": 1.0, "temperature": 0.01}
    opts = parse_set_options(["weight=2", "temperature=1e-3", "seed=3", "num_workers=0"])
    method_kw, runtime = split_overrides(opts, params, "m")
    assert method_kw == {"weight": 2, "temperature": 1e-3}
    assert runtime == {"seed": 3, "num_workers": 0}
    with pytest.raises(ConfigError, match="protocol key"):
        split_overrides({"epochs": 3}, params, "m")
    with pytest.raises(ConfigError, match="protocol key"):
        split_overrides({"training.batch_size": 3}, params, "m")
    with pytest.raises(ConfigError, match=r"unknown key for method 'm' \(valid: temperature, weight\)"):
        split_overrides({"wieght": 3}, params, "m")
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_set_options(["weight"])


def test_every_spec_declares_validation_sets_apart_from_its_test_sets():
    for name in list_benchmarks():
        spec = load_benchmark(name)
        val, tests = spec.tuning.validation_sets, spec.evaluation.eval_sets
        assert val, name
        assert not {v.name for v in val} & {t.name for t in tests}, name
        if spec.data.dataset == "synthetic":
            root = spec.data.root.split("/")[0]
            assert [(v.name, v.kind, v.root, v.usage) for v in val] == [
                ("rsynth_val", "revisited", root, None),
                ("gldv2synth_val", "gldv2", f"{root}/gldv2_val", None),
            ], name
        else:  # real data: the public split of the GLDv2 test set, never ROxford/RParis, never private
            assert [(v.name, v.kind, v.root, v.usage) for v in val] == [
                ("gldv2_public", "gldv2", "gldv2", "public")
            ], name


def test_specs_without_validation_sets_still_load():
    raw = _raw("smoke")
    raw["tuning"] = {"budget": 0, "validation": "none"}  # the form written before validation sets existed
    legacy = spec_from_dict(raw, "x.yaml")
    raw["tuning"] = {"budget": 0}
    bare = spec_from_dict(raw, "x.yaml")
    assert legacy.tuning.validation_sets == bare.tuning.validation_sets == ()
    assert legacy.sha256 == bare.sha256
    raw["tuning"] = {"budget": 0, "validation": "rsynth_val"}
    with pytest.raises(ConfigError, match=r"^x.yaml: tuning.validation: replaced by tuning.validation_sets"):
        spec_from_dict(raw, "x.yaml")


def test_validation_sets_are_protocol_keys():
    with pytest.raises(ConfigError, match="protocol key"):
        split_overrides({"tuning.validation_sets": []}, {}, "m")
    with pytest.raises(ConfigError, match="protocol key"):
        split_overrides({"validation_sets": []}, {}, "m")


def test_gldv2_usage_is_typed():
    raw = _raw("gldv2_class30to100_r18")
    raw["evaluation"]["eval_sets"][2]["usage"] = "private"  # a private-only test set is allowed
    spec = spec_from_dict(raw, "x.yaml")
    assert spec.evaluation.eval_sets[2].usage == "private"
    raw["tuning"]["validation_sets"][0]["usage"] = "private"
    with pytest.raises(
        ConfigError, match=r"tuning.validation_sets\[0\].usage: on the root of test set 'gldv2'"
    ):
        spec_from_dict(raw, "x.yaml")
