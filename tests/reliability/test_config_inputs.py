"""Bad user input is refused before any work, as one line ``error: ...`` (exit 2) naming the file or key:
typed spec YAML, ``--set`` values coerced to the method's annotations, numeric CLI options, broken plugins,
and a closed stdout pipe."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bctbench import registry
from bctbench.config import BENCHMARKS_DIR, load_benchmark
from tests.reliability.conftest import assert_clean_error, run_cli, snapshot

ROOT = Path(__file__).resolve().parents[2]

# ------------------------------------------------------------------------------------------ spec YAML
# (id, text in benchmarks/smoke.yaml, replacement, key the error must name)
_PIN = load_benchmark("smoke").old_model.pinned  # the committed pins of smoke (seed -> identity)

SPEC_CASES = [
    ("query_crop_string_no", "query_crop: true", "query_crop: 'no'", "evaluation.query_crop"),
    ("query_crop_int", "query_crop: true", "query_crop: 1", "evaluation.query_crop"),
    ("sync_bn_string", "sync_bn: true", "sync_bn: 'true'", "models.sync_bn"),
    ("epochs_string", "  epochs: 1\n  batch_size", "  epochs: ten\n  batch_size", "training.epochs"),
    ("epochs_bool", "  epochs: 1\n  batch_size", "  epochs: true\n  batch_size", "training.epochs"),
    ("epochs_float", "  epochs: 1\n  batch_size", "  epochs: 1.5\n  batch_size", "training.epochs"),
    ("epochs_zero", "  epochs: 1\n  batch_size", "  epochs: 0\n  batch_size", "training.epochs"),
    ("old_epochs_negative", "old_model:\n  epochs: 1", "old_model:\n  epochs: -1", "old_model.epochs"),
    ("batch_size_list", "batch_size: 16", "batch_size: [16]", "training.batch_size"),
    ("batch_size_one", "batch_size: 16", "batch_size: 1", "training.batch_size"),
    ("image_size_small", "image_size: 64", "image_size: 8", "training.image_size"),
    ("embed_dim_zero", "embed_dim: 32", "embed_dim: 0", "models.embed_dim"),
    ("num_workers_negative", "num_workers: 0", "num_workers: -1", "training.num_workers"),
    ("precision_unknown", "precision: 32-true", "precision: 33-true", "training.precision"),
    ("neck_unknown", "neck: linear_bn", "neck: mlp", "models.neck"),
    ("lr_word", "lr: 0.1,", "lr: fast,", "training.optimizer.lr"),
    ("lr_yaml11_string", "lr: 0.1,", "lr: 1e-3,", "training.optimizer.lr"),
    ("lr_zero", "lr: 0.1,", "lr: 0,", "training.optimizer.lr"),
    ("lr_nan", "lr: 0.1,", "lr: .nan,", "training.optimizer.lr"),
    ("momentum_one", "momentum: 0.9", "momentum: 1.0", "training.optimizer.momentum"),
    (
        "weight_decay_negative",
        "weight_decay: 5.0e-4",
        "weight_decay: -1.0",
        "training.optimizer.weight_decay",
    ),
    ("gamma_zero", "gamma: 0.1", "gamma: 0", "training.optimizer.gamma"),
    ("warmup_negative", "warmup_epochs: 0", "warmup_epochs: -1", "training.optimizer.warmup_epochs"),
    ("milestones_scalar", "milestones: []", "milestones: 5", "training.optimizer.milestones"),
    ("milestones_strings", "milestones: []", "milestones: [a]", "training.optimizer.milestones[0]"),
    ("milestones_unsorted", "milestones: []", "milestones: [3, 2]", "training.optimizer.milestones"),
    ("ratio_one", "ratio: 0.3", "ratio: 1.0", "data.ratio"),
    ("ratio_string", "ratio: 0.3", "ratio: 'a third'", "data.ratio"),
    ("synthetic_seed_negative", "synthetic_seed: 0", "synthetic_seed: -3", "data.synthetic_seed"),
    ("sampler_int", "sampler: null", "sampler: 3", "training.sampler"),
    ("pinned_string_key", f"    0: {_PIN[0]}", f"    zero: {_PIN[0]}", "old_model.pinned"),
    ("pinned_int_value", f"    1: {_PIN[1]}", "    1: 5", "old_model.pinned.1"),
    (
        "eval_sets_empty",
        "  eval_sets:\n    - {name: rsynth, kind: revisited, root: synth_tiny}\n"
        "    - {name: gldv2synth, kind: gldv2, root: synth_tiny/gldv2}",
        "  eval_sets: []",
        "evaluation.eval_sets",
    ),
    ("eval_set_name_int", "{name: rsynth,", "{name: 5,", "evaluation.eval_sets[0].name"),
    (
        "backfill_fractions_one",
        "backfill_fractions: 11",
        "backfill_fractions: 1",
        "evaluation.backfill_fractions",
    ),
    ("backfill_seeds_negative", "backfill_seeds: [0]", "backfill_seeds: [-1]", "evaluation.backfill_seeds"),
    ("eval_batch_size_zero", "  batch_size: 256", "  batch_size: 0", "evaluation.batch_size"),
    ("tuning_budget_negative", "budget: 2", "budget: -1", "tuning.budget"),
    (
        "validation_sets_scalar",
        "    - {name: rsynth_val, kind: revisited, root: synth_tiny}\n"
        "    - {name: gldv2synth_val, kind: gldv2, root: synth_tiny/gldv2_val}\n",
        "    rsynth_val\n",
        "tuning.validation_sets",
    ),
    ("validation_set_name_int", "{name: rsynth_val,", "{name: 7,", "tuning.validation_sets[0].name"),
    ("validation_set_name_empty", "{name: rsynth_val,", "{name: ' ',", "tuning.validation_sets[0].name"),
    (
        "validation_set_kind_unknown",
        "{name: rsynth_val, kind: revisited, root: synth_tiny}",
        "{name: rsynth_val, kind: faiss, root: synth_tiny}",
        "tuning.validation_sets[0].kind",
    ),
    (
        "validation_set_root_missing",
        "{name: rsynth_val, kind: revisited, root: synth_tiny}",
        "{name: rsynth_val, kind: revisited}",
        "tuning.validation_sets[0]",
    ),
    (
        "validation_set_unknown_key",
        "{name: rsynth_val, kind: revisited, root: synth_tiny}",
        "{name: rsynth_val, kind: revisited, root: synth_tiny, split: val}",
        "tuning.validation_sets[0]: unknown key 'split'",
    ),
    (
        "validation_set_duplicate",
        "{name: gldv2synth_val, kind: gldv2, root: synth_tiny/gldv2_val}",
        "{name: rsynth_val, kind: revisited, root: synth_tiny}",
        "tuning.validation_sets: duplicate eval-set names",
    ),
    (
        "validation_set_is_a_test_set",
        "{name: rsynth_val,",
        "{name: rsynth,",
        "tuning.validation_sets[0].name",
    ),
    (
        "validation_set_usage_on_revisited",
        "{name: rsynth_val, kind: revisited, root: synth_tiny}",
        "{name: rsynth_val, kind: revisited, root: synth_tiny, usage: public}",
        "tuning.validation_sets[0].usage",
    ),
    (
        "validation_set_usage_int",
        "{name: gldv2synth_val, kind: gldv2, root: synth_tiny/gldv2_val}",
        "{name: gldv2synth_val, kind: gldv2, root: synth_tiny/gldv2_val, usage: 1}",
        "tuning.validation_sets[1].usage",
    ),
    (
        "validation_set_usage_unknown",
        "{name: gldv2synth_val, kind: gldv2, root: synth_tiny/gldv2_val}",
        "{name: gldv2synth_val, kind: gldv2, root: synth_tiny/gldv2_val, usage: secret}",
        "tuning.validation_sets[1].usage",
    ),
    (
        "validation_set_private_split_of_a_test_set",
        "{name: gldv2synth_val, kind: gldv2, root: synth_tiny/gldv2_val}",
        "{name: gldv2synth_val, kind: gldv2, root: synth_tiny/gldv2, usage: private}",
        "tuning.validation_sets[1].usage",
    ),
    (
        "validation_set_whole_test_set",
        "{name: gldv2synth_val, kind: gldv2, root: synth_tiny/gldv2_val}",
        "{name: gldv2synth_val, kind: gldv2, root: synth_tiny/gldv2/}",
        "tuning.validation_sets[1].usage",
    ),
    (
        "tuning_validation_legacy_value",
        "budget: 2\n",
        "budget: 2\n  validation: public\n",
        "tuning.validation",
    ),
    (
        "eval_set_usage_on_revisited",
        "{name: rsynth, kind: revisited, root: synth_tiny}",
        "{name: rsynth, kind: revisited, root: synth_tiny, usage: public}",
        "evaluation.eval_sets[0].usage",
    ),
    ("seeds_negative", "\nseeds: [0]", "\nseeds: [-1]", "seeds"),
    ("seeds_duplicate", "\nseeds: [0]", "\nseeds: [0, 0]", "seeds"),
    ("seeds_too_large", "\nseeds: [0]", "\nseeds: [4294967296]", "seeds"),
    ("seeds_string", "\nseeds: [0]", "\nseeds: '0'", "seeds"),
    ("sequential_steps_zero", "\nseeds: [0]", "\nseeds: [0]\nsequential_steps: 0", "sequential_steps"),
    ("sequential_steps_string", "\nseeds: [0]", "\nseeds: [0]\nsequential_steps: '1'", "sequential_steps"),
    ("description_list", "description: >-\n  Tiny", "description:\n  - Tiny", "description"),
]


def _bad_spec(tmp_path: Path, old: str, new: str) -> Path:
    text = (BENCHMARKS_DIR / "smoke.yaml").read_text()
    assert old in text, old
    folder = tmp_path / "specs"
    folder.mkdir(exist_ok=True)
    path = folder / "smoke.yaml"  # the file stem must equal the spec's name
    path.write_text(text.replace(old, new, 1))
    return path


@pytest.mark.parametrize(("old", "new", "key"), [c[1:] for c in SPEC_CASES], ids=[c[0] for c in SPEC_CASES])
def test_bad_spec_value_is_refused_naming_file_and_key(world, tmp_path, old, new, key):
    path = _bad_spec(tmp_path, old, new)
    before = snapshot(world.results, world.cache)
    res = run_cli("run", "-b", str(path), "-m", "independent", "--no-wandb", "--quiet", *world.args())
    line = assert_clean_error(res, str(path), f"{path}: {key}")
    assert snapshot(world.results, world.cache) == before, line


def test_bad_spec_is_refused_by_prepare_data(world, tmp_path):
    path = _bad_spec(tmp_path, "query_crop: true", "query_crop: 'no'")
    before = snapshot(world.data, world.cache)
    res = run_cli("prepare-data", "-b", str(path), *world.args())
    assert_clean_error(res, f"{path}: evaluation.query_crop: expected bool", "'no'")
    assert snapshot(world.data, world.cache) == before


# ------------------------------------------------------------------------------------------ --set values
# (id, method, --set item, text the error must hold)
SET_CASES = [
    ("bct_bool_maybe", "bct", "ract_negatives=maybe", "--set ract_negatives"),
    ("bct_bool_number", "bct", "ract_negatives=2", "--set ract_negatives"),
    ("bct_float_word", "bct", "weight=abc", "--set weight"),
    ("bct_float_list", "bct", "weight=[1,2]", "--set weight"),
    ("bct_float_nan", "bct", "weight=nan", "--set weight"),
    ("bct_float_empty", "bct", "weight=", "--set weight"),
    ("hot_refresh_int_decimal", "hot_refresh", "topk=2.5", "--set topk"),
    ("hot_refresh_int_bool", "hot_refresh", "topk=true", "--set topk"),
    ("hot_refresh_float_word", "hot_refresh", "temperature=warm", "--set temperature"),
    ("ndpp_int_scientific", "ndpp", "k=1e3", "--set k"),
    ("unibct_bool_word", "unibct", "refine=maybe", "--set refine"),
    ("unibct_int_list_bad_item", "unibct", "refine_epochs=[1,a]", "--set refine_epochs"),
    ("unibct_int_list_scalar_word", "unibct", "refine_epochs=often", "--set refine_epochs"),
    ("online_backfill_optional_int", "online_backfill", "hard_negatives=many", "--set hard_negatives"),
    ("lce_optional_float", "lce", "align_weight=heavy", "--set align_weight"),
    ("odpp_bool_word", "odpp", "warm_start=sometimes", "--set warm_start"),
    ("runtime_seed_negative", "independent", "seed=-1", "--set seed"),
    ("runtime_seed_word", "independent", "seed=abc", "--set seed"),
    ("runtime_seed_too_large", "independent", "seed=4294967296", "--set seed"),
    ("runtime_num_workers_negative", "independent", "num_workers=-2", "--set num_workers"),
    ("runtime_num_nodes_zero", "independent", "num_nodes=0", "--set num_nodes"),
    ("runtime_wandb_maybe", "independent", "wandb=maybe", "--set wandb"),
    ("runtime_devices_zero", "independent", "devices=0", "--set devices"),
    ("runtime_devices_word", "independent", "devices=many", "--set devices"),
    ("runtime_sub_key", "independent", "seed.x=1", "--set seed.x"),
]


@pytest.mark.parametrize(
    ("method", "item", "needle"), [c[1:] for c in SET_CASES], ids=[c[0] for c in SET_CASES]
)
def test_bad_set_value_is_refused_before_training(world, method, item, needle):
    before = snapshot(world.results, world.cache)
    res = run_cli("run", "-b", "smoke", "-m", method, "--set", item, "--no-wandb", "--quiet", *world.args())
    line = assert_clean_error(res, needle)
    assert "--set" not in needle or line.startswith(f"error: {needle}:"), line
    assert snapshot(world.results, world.cache) == before, line


def test_set_values_are_coerced_to_the_annotations():
    from bctbench.config import parse_set_options, split_overrides
    from bctbench.pipeline import method_parameters

    cls = registry.get_method("bct")
    opts = parse_set_options(["weight=2", "ract_negatives=YES", "syn_row_scale=off", "seed=3", "devices=0,1"])
    method_kw, runtime = split_overrides(opts, method_parameters(cls), cls.name)
    assert method_kw == {"weight": 2.0, "ract_negatives": True, "syn_row_scale": "off"}
    assert isinstance(method_kw["weight"], float)
    assert runtime == {"seed": 3, "devices": [0, 1]}


# ------------------------------------------------------------------------------------------ CLI options
CLI_CASES = [
    ("seed_negative", ["run", "--seed", "-1"], "--seed"),
    ("seed_word", ["run", "--seed", "one"], "--seed"),
    ("seed_too_large", ["run", "--seed", str(2**32)], "--seed"),
    ("seeds_negative", ["run-all", "--seeds", "0", "-1"], "--seeds"),
    ("seeds_word", ["train-old", "--seeds", "x"], "--seeds"),
    ("seeds_duplicate", ["run-all", "--seeds", "1", "1"], "--seeds"),
    ("num_workers_negative", ["run", "--num-workers", "-1"], "--num-workers"),
    ("num_workers_word", ["run", "--num-workers", "many"], "--num-workers"),
    ("devices_zero", ["run", "--devices", "0"], "--devices"),
    ("devices_negative", ["run", "--devices", "-1"], "--devices"),
    ("devices_bad_list", ["run", "--devices", "0,a"], "--devices"),
    ("devices_duplicate_list", ["run", "--devices", "1,1"], "--devices"),
    ("devices_word", ["run", "--devices", "gpu"], "--devices"),
    ("num_nodes_zero", ["run", "--num-nodes", "0"], "--num-nodes"),
    ("num_nodes_word", ["evaluate", "--checkpoint", "x.ckpt", "--num-nodes", "two"], "--num-nodes"),
]


@pytest.mark.parametrize(("argv", "needle"), [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_bad_cli_option_is_one_line(world, argv, needle):
    command, *rest = argv
    extra = ["-m", "independent"] if command == "run" else []
    before = snapshot(world.results, world.cache)
    res = run_cli(command, "-b", "smoke", *extra, *rest, "--no-wandb", "--quiet", *world.args())
    line = assert_clean_error(res, f"error: {needle}: ")
    assert "usage:" not in res.err
    assert snapshot(world.results, world.cache) == before, line


def test_make_synthetic_seed_is_checked(tmp_path):
    res = run_cli("make-synthetic", "--data-root", str(tmp_path / "d"), "--seed", "-5", "--size", "tiny")
    assert_clean_error(res, "--seed", "'-5'")
    assert not (tmp_path / "d").exists()


# ------------------------------------------------------------------------------------------ plugins
BROKEN_MODULES = {
    "syntax_error": ("def compatibility_loss(self:\n", "SyntaxError"),
    "missing_dependency": ("import bctbench_no_such_dependency_xyz\n", "ModuleNotFoundError"),
    "raises_at_import": (
        "raise RuntimeError('plugin exploded\\nsecond line')\n",
        "RuntimeError: plugin exploded",
    ),
}


def _site(tmp_path: Path, monkeypatch, package: str, body: str, entry_point: str | None = None) -> Path:
    site = tmp_path / "site"
    pkg = site / package
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "plugin.py").write_text(textwrap.dedent(body))
    if entry_point is not None:
        dist = site / f"{package}-0.1.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n")
        (dist / "entry_points.txt").write_text(
            f"[bctbench.methods]\n{entry_point} = {package}.plugin:Broken\n"
        )
    monkeypatch.syspath_prepend(str(site))
    return site


@pytest.fixture
def forget_modules():
    yield
    for mod in [
        m for m in sys.modules if m.startswith(("bctbench_broken_", "bctbench.methods.broken_builtin"))
    ]:
        del sys.modules[mod]


@pytest.mark.parametrize(
    ("body", "kind"), list(BROKEN_MODULES.values()), ids=[f"entry_point_{k}" for k in BROKEN_MODULES]
)
def test_broken_entry_point_plugin_is_one_line(world, tmp_path, monkeypatch, forget_modules, body, kind):
    _site(tmp_path, monkeypatch, "bctbench_broken_ep", body, entry_point="broken_ep")
    assert "broken_ep" in registry.list_methods()
    before = snapshot(world.results, world.cache)
    res = run_cli("run", "-b", "smoke", "-m", "broken_ep", "--no-wandb", "--quiet", *world.args())
    assert_clean_error(res, "'broken_ep'", "module bctbench_broken_ep.plugin", "failed to load", kind)
    assert "second line" not in res.err
    assert snapshot(world.results, world.cache) == before


@pytest.mark.parametrize(
    ("body", "kind"), list(BROKEN_MODULES.values()), ids=[f"import_string_{k}" for k in BROKEN_MODULES]
)
def test_broken_import_string_plugin_is_one_line(world, tmp_path, monkeypatch, forget_modules, body, kind):
    _site(tmp_path, monkeypatch, "bctbench_broken_is", body)
    target = "bctbench_broken_is.plugin:Broken"
    before = snapshot(world.results, world.cache)
    res = run_cli("run", "-b", "smoke", "-m", target, "--no-wandb", "--quiet", *world.args())
    assert_clean_error(res, target, "module bctbench_broken_is.plugin", kind)
    assert snapshot(world.results, world.cache) == before


def test_missing_import_string_module_is_an_unknown_method(world):
    res = run_cli("run", "-b", "smoke", "-m", "bctbench_no_such_pkg.mod:X", "--no-wandb", *world.args())
    assert_clean_error(res, "unknown method 'bctbench_no_such_pkg.mod:X'", "cannot import module")


def test_broken_builtin_methods_file_is_one_line(world, tmp_path, monkeypatch, forget_modules):
    from bctbench import methods

    folder = tmp_path / "extra_methods"
    folder.mkdir()
    (folder / "broken_builtin.py").write_text("import torch\nx = 1 +\n")
    monkeypatch.setattr(methods, "__path__", [*methods.__path__, str(folder)])
    real = registry.builtin_method_names
    monkeypatch.setattr(registry, "builtin_method_names", lambda: sorted([*real(), "broken_builtin"]))
    res = run_cli("run", "-b", "smoke", "-m", "broken_builtin", "--no-wandb", "--quiet", *world.args())
    assert_clean_error(res, "'broken_builtin'", "module bctbench.methods.broken_builtin", "SyntaxError")
    res = run_cli("methods")  # listing goes on and flags the broken one
    assert res.code == 0 and "BROKEN" in res.out and "independent" in res.out


# ------------------------------------------------------------------------------------------ closed pipe
@pytest.mark.parametrize("command", ["methods", "benchmarks"])
def test_closed_stdout_pipe_ends_quietly(command):
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first write, as with `| head -1` on long output
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "bctbench.cli", command],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert proc.returncode in (0, 141), proc.stderr[-2000:]
    assert proc.stderr.strip() == "", proc.stderr[-2000:]


def test_head_of_methods_listing_is_quiet():
    proc = subprocess.run(
        f"'{sys.executable}' -m bctbench.cli methods | head -1",
        shell=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0 and len(proc.stdout.splitlines()) == 1
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
