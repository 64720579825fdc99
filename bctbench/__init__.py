"""bctbench: a PyTorch Lightning benchmark suite for backward-compatible training of retrieval embeddings.

Public API for method plugins (import only from here)::

    from bctbench import CompatibilityMethod, MethodSetup, ModelOutput, Batch, register_method, losses
"""

from bctbench.errors import BCTBenchError, ConfigError, DataError, EvaluationError, UnknownMethodError
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
    # Shared math modules are imported lazily: `bctbench.losses`, `bctbench.layers`, `bctbench.prototypes`.
    if name in ("losses", "layers", "prototypes"):
        import importlib

        return importlib.import_module(f"bctbench.{name}")
    raise AttributeError(f"module 'bctbench' has no attribute {name!r}")
