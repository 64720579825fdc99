"""Where the built-in method plugins, the data modules and the shipped benchmark specs live.

They are the subpackages ``bctbench.methods``, ``bctbench.datamodules`` and ``bctbench.benchmarks`` (the specs
``*.yaml`` and the pinned old models ``old_models/<benchmark>/seed<k>.pt`` are its package data). In a wheel
they are folders inside the installed ``bctbench`` package. The repository keeps them in the top-level folders
``methods/``, ``datamodules/`` and ``benchmarks/``, which ``pyproject.toml`` maps with ``package-dir``:

* an editable install (``pip install -e .``) maps them with setuptools' import hook;
* ``bctbench`` imported straight from a checkout (the checkout on ``sys.path``: not installed, or installed
  from another checkout) maps them with :class:`CheckoutFinder`, installed by ``bctbench/__init__.py``, so that
  they always come from the checkout that ``bctbench`` itself comes from.

Either way nothing is importable as a top-level ``methods`` or ``datamodules`` module.
"""

from __future__ import annotations

import importlib.util
import sys
from importlib.machinery import ModuleSpec, PathFinder
from pathlib import Path

#: Subpackages of ``bctbench`` kept in top-level folders of the repository (folder name = last component).
SUBPACKAGES = ("bctbench.methods", "bctbench.datamodules", "bctbench.benchmarks")

_PACKAGE_DIR = Path(__file__).resolve().parent


class CheckoutFinder:
    """Meta-path finder for :data:`SUBPACKAGES` of the source checkout at ``root`` (``root/<folder>``); every
    other name is left to the normal import system (submodules are found through the package's ``__path__``)."""

    def __init__(self, root: Path) -> None:
        self.root = str(root)

    def find_spec(self, fullname: str, path=None, target=None) -> ModuleSpec | None:
        if fullname not in SUBPACKAGES:
            return None
        return PathFinder.find_spec(fullname, [self.root])

    def __repr__(self) -> str:
        return f"CheckoutFinder({self.root!r})"


def checkout_root() -> Path | None:
    """The repository root when ``bctbench`` is imported from a source checkout (None in a wheel)."""
    root = _PACKAGE_DIR.parent
    if (_PACKAGE_DIR / "methods").is_dir() or not (root / "methods" / "__init__.py").is_file():
        return None
    return root


def install_checkout_finder() -> None:
    """Map :data:`SUBPACKAGES` to the checkout's folders when ``bctbench`` comes from a checkout (idempotent).

    The finder goes first on ``sys.meta_path``: an editable install of another checkout must not provide them."""
    root = checkout_root()
    if root is None or any(isinstance(f, CheckoutFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, CheckoutFinder(root))


def subpackage_dir(name: str) -> Path:
    """The folder of subpackage ``name`` (one of :data:`SUBPACKAGES`), without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"{name} is not installed with bctbench ({_PACKAGE_DIR})", name=name)
    return Path(next(iter(spec.submodule_search_locations))).resolve()
