"""Where data, caches and results live.

Data root: ``--data-root``, else ``$BCTBENCH_DATA``, else ``./data``. Nothing is ever downloaded.

Results: a user's runs go to the results root (``--results-root``, ``$BCTBENCH_RESULTS`` or
``./results/local``). The committed reference results live in :data:`REFERENCE_ROOT` (``results/reference`` of
the repository) and are written only by ``--reference`` runs from a clean tree; earlier results that no longer
pass the leaderboard's provenance gate are kept in ``results/archive``.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "BCTBENCH_DATA"
CACHE_ENV = "BCTBENCH_CACHE"
RESULTS_ENV = "BCTBENCH_RESULTS"
REPO_ROOT = Path(__file__).resolve().parents[1]
REFERENCE_ROOT = REPO_ROOT / "results" / "reference"
ARCHIVE_ROOT = REPO_ROOT / "results" / "archive"


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
    """Return the user's results root: CLI, ``$BCTBENCH_RESULTS`` or ``./results/local``."""
    if cli_value:
        return Path(cli_value).expanduser()
    env = os.environ.get(RESULTS_ENV)
    return Path(env).expanduser() if env else Path("results") / "local"


def is_reference_root(path: str | os.PathLike) -> bool:
    """True when ``path`` is (or lies inside) the committed reference results folder."""
    p = Path(path).expanduser().resolve()
    ref = REFERENCE_ROOT.resolve()
    return p == ref or ref in p.parents
