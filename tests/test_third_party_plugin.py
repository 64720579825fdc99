"""A third-party plugin package, built in a temp folder, registered through the ``bctbench.methods``
entry-point group (a real ``.dist-info`` on ``sys.path``) and run on the smoke benchmark."""

from __future__ import annotations

import sys
import textwrap

import pytest

from bctbench import registry
from bctbench.cli import main
from bctbench.results import hparams_digest, read_result, result_path

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


@pytest.fixture
def plugin_package(tmp_path, monkeypatch):
    site = tmp_path / "site"
    pkg = site / "bctbench_demo_ext"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "plugin.py").write_text(textwrap.dedent(PLUGIN))
    dist = site / "bctbench_demo_ext-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: bctbench-demo-ext\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[bctbench.methods]\ndemo_ext = bctbench_demo_ext.plugin:DemoExt\n"
    )
    monkeypatch.syspath_prepend(str(site))
    yield
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
