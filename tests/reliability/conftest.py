"""Shared tools of the reliability suite: run the CLI in-process, assert a clean one-line error, and a smoke
"world" (data, cache and results roots after one good run) to break copies of."""

from __future__ import annotations

import contextlib
import io
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from bctbench.cli import main


@dataclass
class CliResult:
    code: int
    out: str
    err: str


def run_cli(*argv: str) -> CliResult:
    """Run ``bctbench argv`` in this process; any exception escaping ``main`` fails the test (a traceback)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse
            code = exc.code if isinstance(exc.code, int) else 2
        except BaseException as exc:  # noqa: BLE001 - the point of the suite
            raise AssertionError(
                f"bctbench {' '.join(map(str, argv))} raised {type(exc).__name__}: {exc}"
            ) from exc
    return CliResult(code, out.getvalue(), err.getvalue())


def assert_clean_error(res: CliResult, *needles: str, code: int = 2) -> str:
    """Exit ``code``, exactly one stderr line ``error: ...`` holding every needle, no traceback."""
    assert res.code == code, (res.code, res.err[-2000:])
    assert "Traceback" not in res.err and "Traceback" not in res.out
    lines = [line for line in res.err.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, res.err[-2000:]
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def snapshot(*roots: Path) -> dict[str, bytes]:
    """Every file under ``roots`` (path -> bytes), to prove that a failure changed nothing."""
    return {
        str(p): p.read_bytes()
        for root in roots
        if root.exists()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@dataclass
class World:
    """Roots of a smoke benchmark after one good run of ``independent`` seed 0."""

    data: Path
    cache: Path
    results: Path

    def args(self) -> list[str]:
        return [
            "--data-root",
            str(self.data),
            "--cache-root",
            str(self.cache),
            "--results-root",
            str(self.results),
        ]


@pytest.fixture(scope="session")
def _good_world(tmp_path_factory) -> World:
    base = tmp_path_factory.mktemp("world")
    world = World(base / "data", base / "cache", base / "results")
    res = run_cli("run", "-b", "smoke", "-m", "independent", "--no-wandb", "--quiet", *world.args())
    assert res.code == 0, res.err[-3000:]
    return world


@pytest.fixture
def world(_good_world: World, tmp_path: Path) -> World:
    """A private copy of the good world (break it at will)."""
    copy = World(tmp_path / "data", tmp_path / "cache", tmp_path / "results")
    for src, dst in (
        (_good_world.data, copy.data),
        (_good_world.cache, copy.cache),
        (_good_world.results, copy.results),
    ):
        shutil.copytree(src, dst, symlinks=True)
    return copy
