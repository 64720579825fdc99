"""Where data, caches and results live.

Data root: ``--data-root``, else ``$BCTBENCH_DATA``, else ``./data``. Nothing is ever downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "BCTBENCH_DATA"
CACHE_ENV = "BCTBENCH_CACHE"
RESULTS_ENV = "BCTBENCH_RESULTS"


def resolve_data_root(cli_value: str | os.PathLike | None = None) -> Path:
    """Return the data root: the CLI value, else ``$BCTBENCH_DATA``, else ``./data``."""
    if cli_value:
        return Path(cli_value).expanduser()
    env = os.environ.get(DATA_ENV)
    return Path(env).expanduser() if env else Path("data")


def resolve_cache_root(cli_value: str | os.PathLike | None = None) -> Path:
    """Return the cache root (old checkpoints, artefacts, features): CLI, ``$BCTBENCH_CACHE`` or ``./cache``."""
    if cli_value:
        return Path(cli_value).expanduser()
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path("cache")


def resolve_results_root(cli_value: str | os.PathLike | None = None) -> Path:
    """Return the results root: CLI, ``$BCTBENCH_RESULTS`` or ``./results``."""
    if cli_value:
        return Path(cli_value).expanduser()
    env = os.environ.get(RESULTS_ENV)
    return Path(env).expanduser() if env else Path("results")
