"""Shared fixtures of the results / leaderboard / tracking tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from bctbench.results import write_result
from tests.results.bct_results_fixtures import all_fixture_results


@pytest.fixture
def results_root(tmp_path: Path) -> Path:
    root = tmp_path / "results"
    for res in all_fixture_results():
        write_result(res, root)
    return root
