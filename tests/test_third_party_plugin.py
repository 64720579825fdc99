"""A third-party plugin package, built in a temp folder, registered through the ``bctbench.methods``
entry-point group (a real ``.dist-info`` on ``sys.path``) and run on the smoke benchmark."""

from __future__ import annotations

import sys
import textwrap

import pytest

from bctbench import registry
from bctbench.cli import main
from bctbench.errors import BCTBenchError
from bctbench.results import hparams_digest, read_result, result_path
from bctbench.testing import check_method

PLUGIN = '''
"""Demo third-party method: BCT-style l2 pull with a custom weight."""
import torch
from bctbench import CompatibilityMethod, MethodSetup, losses, register_method


@register_method("demo_ext")
class DemoExt(CompatibilityMethod):
    paper = "Demo third-party plugin (tests)"
    reference_code = "tests/test_third_party_plugin.py"
    needs_old_forward = True

    def __init__(self, setup: MethodSetup, *, pull: float = 3.0) -> None:
        super().__init__(setup)
        self.pull = pull

    def compatibility_loss(self, batch, new, old):
        return {"pull": self.pull * losses.point_to_point_loss(new.embedding_normed, old.embedding_normed,
                                                               batch["labels"], kind="l2")}
'''


def _distribution(site, dist_name: str, entry_points: dict[str, str]) -> None:
    """A ``.dist-info`` folder in ``site`` declaring ``entry_points`` (name -> ``module:Class``) in the
    ``bctbench.methods`` group, as ``pip install`` of a plugin package writes it."""
    dist = site / f"{dist_name.replace('-', '_')}-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: 0.1\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (dist / "entry_points.txt").write_text(f"[bctbench.methods]\n{lines}")


@pytest.fixture
def plugin_package(tmp_path, monkeypatch):
    site = tmp_path / "site"
    pkg = site / "bctbench_demo_ext"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "plugin.py").write_text(textwrap.dedent(PLUGIN))
    _distribution(site, "bctbench-demo-ext", {"demo_ext": "bctbench_demo_ext.plugin:DemoExt"})
    monkeypatch.syspath_prepend(str(site))
    yield site
    registry.unregister_method("demo_ext")
    for mod in [m for m in sys.modules if m.startswith("bctbench_demo_ext")]:
        del sys.modules[mod]


def test_entry_point_plugin_runs_on_smoke(plugin_package, tmp_path, capsys):
    assert "demo_ext" in registry.list_methods()
    roots = [
        "--data-root",
        str(tmp_path / "d"),
        "--cache-root",
        str(tmp_path / "c"),
        "--results-root",
        str(tmp_path / "r"),
    ]
    code = main(
        [
            "run",
            "--benchmark",
            "smoke",
            "--method",
            "demo_ext",
            "--set",
            "pull=2.5",
            "--no-wandb",
            "--quiet",
            *roots,
        ]
    )
    out = capsys.readouterr()
    assert code == 0, out.err
    digest = hparams_digest({"pull": 2.5})  # a variant: its own folder and row, never the default's
    result = read_result(result_path(tmp_path / "r", "smoke", "demo_ext", 0, digest))
    assert result.label == f"demo_ext@{digest}" and result.hparams_digest == digest
    assert result.method_hparams["pull"] == 2.5 and "pull=2.5" in result.flags
    assert any(r["query_model"] == "new" and r["gallery_model"] == "old" for r in result.metrics)


def test_import_string_resolves_the_same_class(plugin_package):
    cls = registry.get_method("bctbench_demo_ext.plugin:DemoExt")
    assert cls.name == "demo_ext" and registry.get_method("demo_ext") is cls


def test_the_plugin_keeps_the_contract(plugin_package, tmp_path):
    check_method("demo_ext", workdir=tmp_path)


def _one_error_line(capsys, *argv: str) -> str:
    code = main(list(argv))
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    (line,) = [line for line in err.splitlines() if line.strip()]
    assert line.startswith("error: ")
    return line


def test_an_entry_point_name_other_than_the_class_name_is_one_line(plugin_package, tmp_path, capsys):
    _distribution(plugin_package, "bctbench-demo-alias", {"demo_alias": "bctbench_demo_ext.plugin:DemoExt"})
    line = _one_error_line(
        capsys, "run", "-b", "smoke", "-m", "demo_alias", "--no-wandb", "--results-root", str(tmp_path / "r")
    )
    for needle in (
        "distribution 'bctbench-demo-alias'",
        "entry point 'demo_alias = bctbench_demo_ext.plugin:DemoExt'",
        "method name is 'demo_ext', not 'demo_alias'",
    ):
        assert needle in line, (needle, line)
    with pytest.raises(AssertionError, match="cannot be loaded: .*not 'demo_alias'"):
        check_method("demo_alias")


def test_two_plugins_with_one_name_are_one_line_naming_both(plugin_package, tmp_path, capsys):
    _distribution(plugin_package, "bctbench-demo-twin", {"demo_ext": "bctbench_demo_twin.plugin:Twin"})
    line = _one_error_line(
        capsys, "run", "-b", "smoke", "-m", "demo_ext", "--no-wandb", "--results-root", str(tmp_path / "r")
    )
    assert "method name 'demo_ext' is claimed by " in line
    assert (
        "entry point 'demo_ext = bctbench_demo_ext.plugin:DemoExt' of distribution 'bctbench-demo-ext'"
        in line
    )
    assert (
        "entry point 'demo_ext = bctbench_demo_twin.plugin:Twin' of distribution 'bctbench-demo-twin'" in line
    )
    assert "bctbench_demo_twin" not in sys.modules  # refused before importing either


def test_an_entry_point_named_like_a_builtin_method_is_refused(plugin_package):
    _distribution(plugin_package, "bctbench-bct-clone", {"bct": "bctbench_demo_ext.plugin:DemoExt"})
    with pytest.raises(BCTBenchError) as info:
        registry.get_method("bct")
    message = str(info.value)
    assert "\n" not in message
    assert (
        "built-in module bctbench.methods.bct and by entry point 'bct = bctbench_demo_ext.plugin:DemoExt' of distribution 'bctbench-bct-clone'"
        in message
    )
