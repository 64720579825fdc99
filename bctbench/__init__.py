"""bctbench: a PyTorch Lightning benchmark suite for backward-compatible training of retrieval embeddings.

Public API for method plugins (import only from here)::

    from bctbench import CompatibilityMethod, MethodSetup, ModelOutput, Batch, register_method, losses
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from bctbench._layout import install_checkout_finder
from bctbench.errors import BCTBenchError, ConfigError, DataError, EvaluationError, UnknownMethodError

install_checkout_finder()

# The rest of the public API is imported on first use (PEP 562), so that `import bctbench.evaluation.metrics`
# or `bctbench leaderboard` do not pay for Lightning (about 2 s and 200 MiB).
_LAZY = {
    "order_from_scores": "bctbench.evaluation.backfill",
    **dict.fromkeys(
        (
            "Batch",
            "CompatibilityMethod",
            "Encoder",
            "LiveEncoder",
            "MethodSetup",
            "ModelOutput",
            "NonFiniteLossError",
            "build_optimizer",
            "module_digest",
        ),
        "bctbench.method",
    ),
    "PseudoOldPrototypeMethod": "bctbench.perturbation",
    **dict.fromkeys(("get_method", "list_methods", "register_method"), "bctbench.registry"),
}
# shared math modules, also imported on first use
_SUBMODULES = ("losses", "layers", "prototypes")

if TYPE_CHECKING:
    from bctbench.evaluation.backfill import order_from_scores
    from bctbench.method import (
        Batch,
        CompatibilityMethod,
        Encoder,
        LiveEncoder,
        MethodSetup,
        ModelOutput,
        NonFiniteLossError,
        build_optimizer,
        module_digest,
    )
    from bctbench.perturbation import PseudoOldPrototypeMethod
    from bctbench.registry import get_method, list_methods, register_method

__version__ = "0.1.0"

__all__ = [
    "BCTBenchError",
    "Batch",
    "CompatibilityMethod",
    "ConfigError",
    "DataError",
    "Encoder",
    "EvaluationError",
    "LiveEncoder",
    "MethodSetup",
    "ModelOutput",
    "NonFiniteLossError",
    "PseudoOldPrototypeMethod",
    "UnknownMethodError",
    "__version__",
    "build_optimizer",
    "get_method",
    "list_methods",
    "module_digest",
    "order_from_scores",
    "register_method",
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"bctbench.{name}")
    raise AttributeError(f"module 'bctbench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))
