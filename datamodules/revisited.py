"""Revisited ROxford5k / RParis6k eval sets (``docs/data_formats.md`` §6, ``docs/evaluation.md`` §3.2).

Accepted layouts (the first that has the pickle wins):

* revisitop (canonical): ``<root>/datasets/<name>/gnd_<name>.pkl`` with images in ``<root>/datasets/<name>/jpg/``;
* AdvBCT: ``<root>/ROxfordParis/gnd_<name>.pkl`` with images in ``<root>/ROxfordParis/<name>/jpg/``.

``gnd_<name>.pkl`` holds ``imlist`` (database names without extension), ``qimlist`` (query names; queries are
not in the database) and ``gnd`` (one dict per query: ``bbx`` = [x1, y1, x2, y2], ``easy``/``hard``/``junk`` =
0-based indices into ``imlist``). Images are ``jpg/<name>.jpg``. Queries are cropped to ``bbx`` before any
transform (``query_crop=True``, the revisited protocol); ``query_crop=False`` is the ``advbct_compat`` variant
(whole query image).

The pickle is read by a restricted unpickler (:class:`GndUnpickler`): plain containers, numbers, strings and
NumPy arrays/scalars only, so a crafted file cannot run code (a ``__reduce__`` payload naming ``os.system``,
``builtins.eval``, ``subprocess.call`` or any other callable is refused with a one-line :class:`DataError`).
"""

from __future__ import annotations

import _codecs
import functools
import math
import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bctbench.errors import DataError
from bctbench.evaluation.evalsets import RevisitedEvalSet
from bctbench.evaluation.holdout import check_ground_truth

GND_KEYS = ("imlist", "qimlist", "gnd")
QUERY_KEYS = ("bbx", "easy", "hard", "junk")
_MAX_LISTED = 5
_MAX_NAME = 120

__all__ = ["GndUnpickler", "find_revisited", "gnd_candidates", "load_revisited_eval_set", "read_gnd"]


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle names a global (class or function) that :class:`GndUnpickler` does not admit."""

    def __init__(self, module: str, name: str) -> None:
        # the names come from the file: keep them on one line and short
        module, name = (" ".join(str(v).split())[:_MAX_NAME] for v in (module, name))
        super().__init__(f"refused to unpickle {module}.{name}")
        self.module, self.name = module, name


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for ``bytes`` (NumPy array buffers): latin-1 only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise RefusedGlobal("_codecs", f"encode with encoding {encoding!r}")
    return _codecs.encode(text, encoding, errors)


@functools.cache
def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The globals NumPy's pickles of arrays, dtypes and scalars reference (NumPy 1.x ``numpy.core`` and
    NumPy 2.x ``numpy._core`` names; both resolve to the installed NumPy's functions)."""
    import numpy as np

    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # NumPy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,  # protocol 2: bytes as _codecs.encode(str, "latin1")
    }
    for pkg in ("numpy.core", "numpy._core"):
        allowed[(f"{pkg}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{pkg}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{pkg}.numeric", "_frombuffer")] = numeric._frombuffer  # protocol 5 (in-band buffers)
    return allowed


class GndUnpickler(pickle.Unpickler):
    """Unpickler for revisitop ``gnd_*.pkl`` files: builtin containers/scalars (dict, list, tuple, str, int,
    float, bool, None) and NumPy arrays/dtypes/scalars; every other global raises :class:`RefusedGlobal`
    before anything is imported or called. Persistent ids are refused too (``Unpickler``'s default)."""

    def find_class(self, module: str, name: str) -> Any:
        obj = _allowed_globals().get((module, name))
        if obj is None:
            raise RefusedGlobal(module, name)
        return obj


def _layouts(root: Path, name: str) -> list[tuple[Path, Path]]:
    return [
        (root / "datasets" / name / f"gnd_{name}.pkl", root / "datasets" / name / "jpg"),
        (root / "ROxfordParis" / f"gnd_{name}.pkl", root / "ROxfordParis" / name / "jpg"),
    ]


def gnd_candidates(root: str | os.PathLike, name: str) -> tuple[Path, ...]:
    """Every path :func:`find_revisited` may take the ground truth of ``name`` from (one per layout)."""
    return tuple(pkl for pkl, _ in _layouts(Path(root), name))


def find_revisited(root: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """``(gnd pickle, jpg folder)`` of eval set ``name`` under ``root`` (revisitop or AdvBCT layout)."""
    root = Path(root)
    layouts = _layouts(root, name)
    for pkl, jpg in layouts:
        if pkl.is_file():
            if not jpg.is_dir():
                raise DataError(f"{jpg}: image folder not found (next to {pkl})")
            return pkl, jpg
    raise DataError(f"{layouts[0][0]}: ground truth of {name!r} not found (also tried {layouts[1][0]})")


def _index_list(pkl: Path, qi: int, qname: str, key: str, values: Any, n_db: int) -> list[int]:
    where = f"{pkl}: query {qi} ({qname}) key '{key}'"
    try:
        items = list(values)
    except TypeError as err:
        raise DataError(f"{where}: expected a list of indices, got {type(values).__name__}") from err
    out = []
    for v in items:
        try:
            iv = int(v)
        except (TypeError, ValueError) as err:
            raise DataError(f"{where}: index {v!r} is not an integer") from err
        if iv != v:
            raise DataError(f"{where}: index {v!r} is not an integer")
        if not 0 <= iv < n_db:
            raise DataError(f"{where}: index {iv} out of range [0, {n_db}) of imlist")
        out.append(iv)
    return out


def _box(pkl: Path, qi: int, qname: str, bbx: Any) -> tuple[float, float, float, float]:
    where = f"{pkl}: query {qi} ({qname}) key 'bbx'"
    try:
        box = tuple(float(v) for v in bbx)
    except (TypeError, ValueError) as err:
        raise DataError(f"{where}: expected 4 numbers [x1, y1, x2, y2], got {bbx!r}") from err
    if len(box) != 4 or not all(math.isfinite(v) for v in box):
        raise DataError(f"{where}: expected 4 finite numbers [x1, y1, x2, y2], got {bbx!r}")
    if not (box[2] > box[0] and box[3] > box[1]):
        raise DataError(f"{where}: empty box {list(box)} (need x2 > x1 and y2 > y1)")
    return box  # type: ignore[return-value]


def _names(pkl: Path, key: str, values: Any) -> list[str]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise DataError(f"{pkl}: key '{key}' must be a list of image names, got {type(values).__name__}")
    for i, v in enumerate(values):
        if not isinstance(v, str) or not v:
            raise DataError(f"{pkl}: key '{key}' entry {i} is not a non-empty image name: {v!r}")
    return list(values)


def read_gnd(pkl: str | os.PathLike) -> tuple[list[str], list[str], list[dict[str, Any]]]:
    """Read and validate ``gnd_<name>.pkl``: ``(imlist, qimlist, gnd)``.

    ``gnd[i]`` = ``{"bbx": (x1, y1, x2, y2), "easy": [...], "hard": [...], "junk": [...]}`` with int indices
    into ``imlist``. Errors name the file, the query number and the key (missing key, index out of range,
    overlapping easy/hard/junk, bad box). The file is read with :class:`GndUnpickler` (no code runs; a
    refused global is a one-line ``DataError``). While tuning (:func:`bctbench.evaluation.holdout.sealed`) only
    a validation set's file may be read; a test set's raises ``SealedTestSetError`` before it is opened.
    """
    pkl = Path(pkl)
    check_ground_truth("revisited", pkl)
    try:
        with open(pkl, "rb") as f:
            data = GndUnpickler(f).load()
    except FileNotFoundError as err:
        raise DataError(f"{pkl}: file not found") from err
    except RefusedGlobal as err:
        raise DataError(
            f"{pkl}: refused to unpickle {err.module}.{err.name} "
            "(only plain containers, numbers, strings and NumPy arrays are allowed)"
        ) from err
    except Exception as err:  # unpickling raises many types (UnpicklingError, EOFError, ValueError, ...)
        raise DataError(
            f"{pkl}: cannot unpickle ({type(err).__name__}: {' '.join(str(err).split())})"
        ) from err
    if not isinstance(data, dict):
        raise DataError(f"{pkl}: expected a dict with keys {', '.join(GND_KEYS)}, got {type(data).__name__}")
    for key in GND_KEYS:
        if key not in data:
            raise DataError(f"{pkl}: missing key '{key}'")
    imlist = _names(pkl, "imlist", data["imlist"])
    qimlist = _names(pkl, "qimlist", data["qimlist"])
    raw = data["gnd"]
    if not isinstance(raw, Sequence) or len(raw) != len(qimlist):
        n = len(raw) if isinstance(raw, Sequence) else type(raw).__name__
        raise DataError(
            f"{pkl}: key 'gnd' must be a list of {len(qimlist)} dicts (one per qimlist entry), got {n}"
        )
    n_db = len(imlist)
    gnd: list[dict[str, Any]] = []
    for qi, (qname, g) in enumerate(zip(qimlist, raw, strict=True)):
        if not isinstance(g, dict):
            raise DataError(f"{pkl}: query {qi} ({qname}): gnd entry is {type(g).__name__}, not a dict")
        for key in QUERY_KEYS:
            if key not in g:
                raise DataError(f"{pkl}: query {qi} ({qname}) missing key '{key}'")
        entry: dict[str, Any] = {"bbx": _box(pkl, qi, qname, g["bbx"])}
        for key in ("easy", "hard", "junk"):
            entry[key] = _index_list(pkl, qi, qname, key, g[key], n_db)
        for a, b in (("easy", "hard"), ("easy", "junk"), ("hard", "junk")):
            both = sorted(set(entry[a]) & set(entry[b]))
            if both:
                raise DataError(
                    f"{pkl}: query {qi} ({qname}) keys '{a}' and '{b}' share index {both[0]} ({len(both)} shared)"
                )
        gnd.append(entry)
    return imlist, qimlist, gnd


def load_revisited_eval_set(root: str | os.PathLike, name: str, query_crop: bool = True) -> RevisitedEvalSet:
    """Load ``name`` (``roxford5k``, ``rparis6k``, or any set in the same format) from ``root``.

    Gallery = ``imlist`` order, queries = ``qimlist`` order, paths ``<jpg>/<name>.jpg`` (all must exist);
    ``query_boxes[i]`` = ``gnd[i]["bbx"]`` if ``query_crop`` else None (the eval set's ``name`` is ``name`` in
    both variants: callers record the variant, e.g. in feature-cache keys and results).
    """
    pkl, jpg = find_revisited(root, name)
    imlist, qimlist, gnd = read_gnd(pkl)
    try:
        present = set(os.listdir(jpg))
    except OSError as err:
        raise DataError(f"{jpg}: cannot list image folder ({err.strerror or err})") from err
    wanted = [f"{n}.jpg" for n in qimlist] + [f"{n}.jpg" for n in imlist]
    missing = [w for w in wanted if w not in present]
    if missing:
        raise DataError(
            f"{jpg}: {len(missing)} of {len(wanted)} images listed in {pkl.name} are missing; "
            f"first: {', '.join(missing[:_MAX_LISTED])}"
        )
    return RevisitedEvalSet(
        name=name,
        query_paths=tuple(jpg / f"{n}.jpg" for n in qimlist),
        gallery_paths=tuple(jpg / f"{n}.jpg" for n in imlist),
        gnd=tuple(gnd),
        query_boxes=tuple(g["bbx"] if query_crop else None for g in gnd),
    )
