"""Test sets stay sealed while tuning (``docs/evaluation.md`` §8.1).

Tuning and design decisions may read validation data only; the test eval sets are read for the final report.
Inside :func:`sealed` every read of an eval set's ground truth — a revisited ``gnd_<name>.pkl``
(``datamodules.revisited.read_gnd``) or a GLDv2 solution CSV (``datamodules.gldv2.read_retrieval_solution``) —
passes :func:`check_ground_truth` first, which admits only the files of the declared validation sets and raises
:class:`~bctbench.errors.SealedTestSetError` for anything else, naming the test set when the file is one.

Files are compared after resolving symbolic links, so a link or a second spelling of a test set's path does not
open it. The one part of a test set's file that may serve as validation data is the **public** split of a GLDv2
solution CSV whose test set is scored on its private split (GLDv2's own protocol: tune on public, report
private); the loader then keeps only the public rows.

The seal is process-wide (not per thread) and nests; the innermost seal decides.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bctbench.errors import SealedTestSetError

__all__ = ["GroundTruth", "check_ground_truth", "is_sealed", "sealed"]


@dataclass(frozen=True)
class GroundTruth:
    """The ground-truth file of one eval set: ``kind`` ("revisited" | "gldv2"), the eval set's ``name``,
    every path its loader may read it from (``paths``: all accepted layouts) and, for GLDv2, the ``usage``
    whose rows it keeps ("public" | "private"; None: both)."""

    kind: str
    name: str
    paths: tuple[Path, ...]
    usage: str | None = None


@dataclass(frozen=True, eq=False)
class _Seal:
    allowed: tuple[GroundTruth, ...]
    tests: tuple[GroundTruth, ...]


_LOCK = threading.Lock()
_SEALS: list[_Seal] = []


def _resolve(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(os.fspath(path)))


def _holds(gt: GroundTruth, kind: str, target: Path) -> bool:
    return gt.kind == kind and any(_resolve(p) == target for p in gt.paths)


def _opens_test(test: GroundTruth, kind: str, target: Path, usage: str | None) -> bool:
    """Whether reading ``target`` with ``usage`` reads (part of) the scored queries of test set ``test``."""
    if not _holds(test, kind, target):
        return False
    # the public rows of a GLDv2 solution whose test set is scored on private (or both) are validation data
    return not (kind == "gldv2" and usage == "public" and test.usage != "public")


@contextlib.contextmanager
def sealed(allowed: Iterable[GroundTruth], tests: Iterable[GroundTruth] = ()) -> Iterator[None]:
    """Within the block only the ground truth of ``allowed`` (the validation sets) may be read; ``tests``
    (the benchmark's test sets) are named in the error when one of their files is opened."""
    seal = _Seal(tuple(allowed), tuple(tests))
    with _LOCK:
        _SEALS.append(seal)
    try:
        yield
    finally:
        with _LOCK:
            for i in range(len(_SEALS) - 1, -1, -1):
                if _SEALS[i] is seal:
                    del _SEALS[i]
                    break


def is_sealed() -> bool:
    """True inside :func:`sealed` (while tuning)."""
    with _LOCK:
        return bool(_SEALS)


def check_ground_truth(kind: str, path: str | os.PathLike, usage: str | None = None) -> None:
    """Raise :class:`SealedTestSetError` if reading the ground truth at ``path`` (GLDv2: keeping ``usage``'s
    rows, None = both) is not allowed by the innermost seal; no-op outside :func:`sealed`."""
    with _LOCK:
        seal = _SEALS[-1] if _SEALS else None
    if seal is None:
        return
    target = _resolve(path)
    test = next((t for t in seal.tests if _opens_test(t, kind, target, usage)), None)
    if test is None and any(_holds(v, kind, target) and v.usage == usage for v in seal.allowed):
        return
    test = test or next((t for t in seal.tests if _holds(t, kind, target)), None)
    if test is not None:
        raise SealedTestSetError(
            f"test set '{test.name}' opened during tuning ({target}); only validation sets may be read"
        )
    names = ", ".join(v.name for v in seal.allowed) or "none declared"
    what = f"{kind} ground truth {target}" + (f" (usage {usage})" if usage else "")
    raise SealedTestSetError(f"{what} opened during tuning; only the validation sets ({names}) may be read")
