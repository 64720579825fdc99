import sys
import textwrap
import types
import warnings

import pytest

from bctbench import registry
from bctbench.errors import BCTBenchError, UnknownMethodError
from bctbench.method import CompatibilityMethod
from bctbench.testing import check_method


def _make_cls(name):
    cls = type(f"M_{name}", (CompatibilityMethod,), {"compatibility_loss": lambda self, b, n, o: {}})
    cls.__module__ = f"fake_{name}"
    return cls


def test_builtin_file_convention_lists_without_importing_templates():
    names = registry.list_methods()
    assert "independent" in names
    assert "_template" not in names and "my_method" not in names


def test_get_builtin_method_lazily():
    cls = registry.get_method("independent")
    assert issubclass(cls, CompatibilityMethod) and cls.name == "independent"
    assert cls.paper and cls.reference_code


def test_unknown_method_lists_valid_names():
    with pytest.raises(UnknownMethodError) as info:
        registry.get_method("nosuch")
    msg = str(info.value)
    assert "unknown method 'nosuch'" in msg and "independent" in msg and "\n" not in msg


def test_duplicate_name_raises():
    registry.register_method("dup_test")(_make_cls("a"))
    try:
        with pytest.raises(
            BCTBenchError, match="already registered by fake_a.M_a; fake_b.M_b cannot register"
        ):
            registry.register_method("dup_test")(_make_cls("b"))
    finally:
        registry.unregister_method("dup_test")


def test_bad_name_raises():
    with pytest.raises(BCTBenchError, match="lower snake case"):
        registry.register_method("Bad-Name")(_make_cls("c"))


def test_import_string(monkeypatch):
    mod = types.ModuleType("ext_plugin_mod")
    cls = _make_cls("ext")
    cls.name = "ext_by_string"
    mod.ExtMethod = cls
    monkeypatch.setitem(sys.modules, "ext_plugin_mod", mod)
    try:
        assert registry.get_method("ext_plugin_mod:ExtMethod") is cls
        assert "ext_by_string" in registry.list_methods()
    finally:
        registry.unregister_method("ext_by_string")
    with pytest.raises(UnknownMethodError, match="has no attribute"):
        registry.get_method("ext_plugin_mod:Missing")


class _FakeEP:
    def __init__(self, name, value, loader):
        self.name, self.value, self._loader = name, value, loader

    def load(self):
        return self._loader()


def test_entry_points_and_broken_plugin_only_warns(monkeypatch):
    good = _make_cls("ep")
    good.name = "ep_good"

    def broken():
        raise ImportError("boom")

    eps = [_FakeEP("ep_good", "pkg:Good", lambda: good), _FakeEP("ep_broken", "pkg:Broken", broken)]
    monkeypatch.setattr(registry, "_entry_points", lambda: eps)
    try:
        assert {"ep_good", "ep_broken"} <= set(registry.list_methods())
        assert registry.get_method("ep_good") is good
        expected = r"'ep_broken' \(entry point pkg:Broken, module pkg\) failed to load: ImportError: boom"
        with pytest.raises(BCTBenchError, match=expected):
            registry.get_method("ep_broken")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loaded = registry.load_all_methods()
        assert "ep_good" in loaded and "ep_broken" not in loaded
        assert any("ep_broken" in str(w.message) for w in caught)
    finally:
        registry.unregister_method("ep_good")


def test_template_is_a_valid_plugin_skeleton():
    # The template is not discovered, but it must import and subclass the contract correctly.
    import importlib

    mod = importlib.import_module("bctbench.methods._template")
    try:
        assert issubclass(mod.MyMethod, CompatibilityMethod)
        check_method(mod.MyMethod)  # the public contract checks (bctbench.testing)
    finally:
        registry.unregister_method("my_method")
    assert textwrap.dedent(mod.__doc__).strip()


def test_public_api_names_resolve_and_metrics_import_without_lightning():
    import subprocess
    import sys

    import bctbench

    for name in bctbench.__all__:
        assert getattr(bctbench, name) is not None, name
    assert set(bctbench.__all__) <= set(dir(bctbench))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        bctbench.nope  # noqa: B018
    # the pure evaluation layer (metrics, search, leaderboard readers) stays light: no Lightning import
    code = (
        "import sys, bctbench.evaluation.metrics, bctbench.evaluation.search; "
        "print('lightning' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
