"""Google Landmarks v2 (GLDv2): strict CSV readers, allocation split files, the retrieval eval set and the
training ``GLDv2DataModule``.

Layout (``docs/data_formats.md`` §1-2, §5): ``<gldv2_root>/{train,index,test}/<a>/<b>/<c>/<id>.jpg`` with
``<a><b><c>`` the first three characters of the 16-character lowercase hex id; the metadata CSVs
(``train_clean.csv``, ``index.csv``, ``test.csv``, ``retrieval_solution_v2.1.csv``) in ``<gldv2_root>``
itself or in its ``metadata/`` or ``ground_truth/`` folder.

Split files (default folder ``<gldv2_root>/splits``), written by :func:`prepare_split`:

* ``gldv2_clean.csv``: ``image_id, landmark_id, label, path`` (the §3.2 derivation from ``train_clean.csv``;
  ``label`` = rank of ``landmark_id``; rows ordered by label, then list order; ``path`` relative to the root);
* ``<allocation>.csv``: the allocation (schema in :mod:`datamodules.splits`), row ``i`` = row ``i`` of
  ``gldv2_clean.csv``;
* ``<allocation>.lock.json``: sha256 of the source list and of both CSVs, ratio, seeds, counts.
  :func:`load_split` refuses CSVs whose sha256 no longer matches the lock.

Every problem with the files raises a one-line :class:`~bctbench.errors.DataError` naming the file and the
line, id or column.

Bare § numbers in this module refer to ``docs/data_formats.md``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
import numpy as np
import pandas as pd
import torch

from bctbench.data import (
    RRC_SCALE,
    AugmentingCollate,
    ClassBalancedSampler,
    ImageListDataset,
    ImageLoader,
    augment_batch,
    build_test_transform,
    build_train_transform,
    pil_to_uint8,
)
from bctbench.datamodules.splits import (
    CLASS_SEED,
    DATA_BASE_SEED,
    DEFAULT_RATIO,
    SEQUENTIAL_ALLOCATIONS,
    SPLIT_COLUMNS,
    allocation_counts,
    build_allocation,
    num_steps,
    sequential_pair,
)
from bctbench.epoch_order import EpochSeededDataset, EpochShuffleSampler
from bctbench.errors import ConfigError, DataError
from bctbench.evaluation.evalsets import GLDV2_PROTOCOLS, GLDv2EvalSet
from bctbench.evaluation.holdout import check_ground_truth

TRAIN_CLEAN_CSV = "train_clean.csv"
INDEX_CSV = "index.csv"
TEST_CSV = "test.csv"
SOLUTION_CSV = "retrieval_solution_v2.1.csv"
CLEAN_SPLIT_CSV = "gldv2_clean.csv"
METADATA_DIRS = ("", "metadata", "ground_truth")
LOCK_SCHEMA_VERSION = 1
EXPECTED_CLASSES = 81_313  # full GLDv2-clean; only reported in the lock, tiny trees are fine
EXPECTED_IMAGES = 1_580_470
_ID_PATTERN = r"[0-9a-f]{16}"
_USAGES = {"public": "public", "private": "private", "ignored": None}
_MAX_LISTED = 5

__all__ = [
    "GLDv2DataModule",
    "ImageList",
    "find_metadata",
    "image_relpath",
    "load_gldv2_eval_set",
    "load_split",
    "metadata_candidates",
    "prepare_split",
    "read_index_csv",
    "read_retrieval_solution",
    "read_test_csv",
    "read_train_clean",
    "split_paths",
]


# ---------------------------------------------------------------------------------------------------------
# paths and small helpers


def image_relpath(split: str, image_id: str) -> str:
    """``<split>/<id[0]>/<id[1]>/<id[2]>/<id>.jpg`` (relative to the GLDv2 root)."""
    return f"{split}/{image_id[0]}/{image_id[1]}/{image_id[2]}/{image_id}.jpg"


def _relpaths(split: str, ids: pd.Series) -> pd.Series:
    return pd.Series([f"{split}/{i[0]}/{i[1]}/{i[2]}/{i}.jpg" for i in ids.astype(str)], dtype=object)


def metadata_candidates(gldv2_root: str | os.PathLike, filename: str) -> tuple[Path, ...]:
    """Every path :func:`find_metadata` may take ``filename`` from, in the order it tries them."""
    root = Path(gldv2_root)
    return tuple(root / d / filename if d else root / filename for d in METADATA_DIRS)


def find_metadata(gldv2_root: str | os.PathLike, filename: str) -> Path:
    """Path of a metadata CSV in ``<root>``, ``<root>/metadata`` or ``<root>/ground_truth``."""
    root = Path(gldv2_root)
    if not root.is_dir():
        raise DataError(f"{root}: GLDv2 root folder not found")
    candidates = list(metadata_candidates(root, filename))
    for c in candidates:
        if c.is_file():
            return c
    raise DataError(
        f"{candidates[0]}: file not found (also looked in {', '.join(str(c.parent) for c in candidates[1:])})"
    )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _missing_files(root: Path, relpaths: pd.Series) -> np.ndarray:
    """Positions of ``relpaths`` (``"a/b/c/name"``) with no entry under ``root``; lists each folder once."""
    parts = relpaths.str.rpartition("/")
    existing: list[str] = []
    for d in pd.unique(parts[0]):
        try:
            existing.extend(f"{d}/{name}" for name in os.listdir(root / d))
        except (FileNotFoundError, NotADirectoryError):
            pass
    return np.flatnonzero(~relpaths.isin(set(existing)).to_numpy(dtype=bool))


def _check_files_exist(root: Path, ids: pd.Series, relpaths: pd.Series, listed_in: str) -> None:
    missing = _missing_files(root, relpaths)
    if missing.size:
        first = ", ".join(f"{ids.iloc[i]} ({relpaths.iloc[i]})" for i in missing[:_MAX_LISTED])
        raise DataError(
            f"{root}: {missing.size} of {len(relpaths)} images listed in {listed_in} are missing; first: {first}"
        )


# ---------------------------------------------------------------------------------------------------------
# strict CSV readers


def _read_csv_rows(
    path: str | os.PathLike,
    columns: Sequence[str],
    keep: Callable[[list[str], int], bool] | None = None,
) -> tuple[list[list[str]], list[int]]:
    """Rows (fields in ``columns`` order) and their 1-based line numbers; header must be exactly ``columns``
    (any order). Blank lines are skipped; with ``keep``, so is every row for which ``keep(fields, line)`` is
    false (it is never stored)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    expected = ",".join(columns)
    rows: list[list[str]] = []
    lines: list[int] = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path}: empty file (expected header {expected})")
            header = [h.strip() for h in header]
            for c in columns:
                if c not in header:
                    raise DataError(
                        f"{path}: line 1: missing column '{c}' (expected {expected}, found {','.join(header)})"
                    )
            for h in header:
                if h not in columns:
                    raise DataError(f"{path}: line 1: unexpected column '{h}' (expected {expected})")
            if len(header) != len(columns):
                raise DataError(f"{path}: line 1: duplicate column in header {','.join(header)}")
            pos = [header.index(c) for c in columns]
            n = len(header)
            for fields in reader:
                if not fields or (len(fields) == 1 and not fields[0].strip()):
                    continue
                if len(fields) != n:
                    raise DataError(
                        f"{path}: line {reader.line_num}: malformed row, expected {n} fields ({expected}), got {len(fields)}"
                    )
                row = [fields[p].strip() for p in pos]
                if keep is not None and not keep(row, reader.line_num):
                    continue
                rows.append(row)
                lines.append(reader.line_num)
    except csv.Error as err:
        raise DataError(f"{path}: line {reader.line_num}: malformed CSV ({err})") from err
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    except OSError as err:
        raise DataError(f"{path}: cannot read ({type(err).__name__}: {err.strerror or err})") from err
    return rows, lines


def _valid_ids(ids: pd.Series) -> np.ndarray:
    """``bool[N]``: 16-character lowercase hex. Vectorised fast path, regex only when something is off."""
    values = ids.tolist()
    lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
    if (lengths == 16).all():
        try:
            raw = np.frombuffer("".join(values).encode("ascii"), dtype=np.uint8).reshape(-1, 16)
        except UnicodeEncodeError:
            raw = None
        if raw is not None:
            ok = (((raw >= ord("0")) & (raw <= ord("9"))) | ((raw >= ord("a")) & (raw <= ord("f")))).all(
                axis=1
            )
            if ok.all():
                return ok
    return ids.str.fullmatch(_ID_PATTERN).to_numpy(dtype=bool, na_value=False)


def _check_ids(path: Path, ids: pd.Series, lines: np.ndarray, what: str = "image id") -> None:
    """16-character lowercase hex ids, no duplicates. ``lines[i]`` = line number of ``ids[i]``."""
    ok = _valid_ids(ids)
    if not ok.all():
        i = int(np.argmin(ok))
        raise DataError(
            f"{path}: line {lines[i]}: {what} {ids.iloc[i]!r} is not a 16-character lowercase hex id"
        )
    dup = ids.duplicated(keep="first").to_numpy(dtype=bool)
    if dup.any():
        j = int(np.argmax(dup))
        i = int(np.argmax((ids == ids.iloc[j]).to_numpy(dtype=bool)))
        raise DataError(
            f"{path}: line {lines[j]}: duplicate {what} {ids.iloc[j]} (first listed at line {lines[i]})"
        )


def read_train_clean(path: str | os.PathLike) -> pd.DataFrame:
    """Read ``train_clean.csv`` (columns exactly ``landmark_id,images``; ``images`` = space-separated ids)
    and apply the §3.2 derivation.

    Returns a DataFrame with columns ``image_id`` (str), ``landmark_id`` (int64), ``label`` (int64, rank of
    ``landmark_id`` among the sorted distinct ids, 0..C-1); rows ordered by label, then the order of the ids in
    the ``images`` field. Errors name the file and line (malformed row, bad landmark id, empty image list,
    bad or duplicate image id, duplicate landmark id).
    """
    path = Path(path)
    rows, lines = _read_csv_rows(path, ("landmark_id", "images"))
    if not rows:
        raise DataError(f"{path}: no data rows")
    lm = pd.Series([r[0] for r in rows], dtype=object)
    ok = lm.str.fullmatch(r"\d+").to_numpy(dtype=bool)
    if not ok.all():
        i = int(np.argmin(ok))
        raise DataError(f"{path}: line {lines[i]}: landmark_id {rows[i][0]!r} is not a non-negative integer")
    landmark = lm.astype(np.int64).to_numpy()
    dup = pd.Series(landmark).duplicated(keep="first").to_numpy()
    if dup.any():
        j = int(np.argmax(dup))
        i = int(np.argmax(landmark == landmark[j]))
        raise DataError(
            f"{path}: line {lines[j]}: duplicate landmark_id {landmark[j]} (first listed at line {lines[i]})"
        )
    per_row = [r[1].split() for r in rows]
    counts = np.fromiter((len(x) for x in per_row), dtype=np.int64, count=len(per_row))
    if (counts == 0).any():
        i = int(np.argmin(counts))
        raise DataError(f"{path}: line {lines[i]}: empty images list for landmark_id {landmark[i]}")
    ids = pd.Series([i for x in per_row for i in x], dtype=object)
    _check_ids(path, ids, np.repeat(np.asarray(lines, dtype=np.int64), counts))
    order = np.argsort(landmark, kind="stable")  # label = rank of landmark_id
    row_of_image = np.repeat(np.arange(len(rows)), counts)
    label_of_row = np.empty(len(rows), dtype=np.int64)
    label_of_row[order] = np.arange(len(rows), dtype=np.int64)
    image_label = label_of_row[row_of_image]
    perm = np.argsort(image_label, kind="stable")  # by label, then list order
    return pd.DataFrame(
        {
            "image_id": ids.to_numpy(dtype=object)[perm].astype(str),
            "landmark_id": landmark[row_of_image][perm],
            "label": image_label[perm],
        }
    )


def _read_id_csv(path: str | os.PathLike) -> np.ndarray:
    path = Path(path)
    rows, lines = _read_csv_rows(path, ("id",))
    ids = pd.Series([r[0] for r in rows], dtype=object)
    _check_ids(path, ids, np.asarray(lines, dtype=np.int64))
    return ids.to_numpy(dtype=object).astype(str)


def read_index_csv(path: str | os.PathLike) -> np.ndarray:
    """Gallery ids of ``index.csv`` (column exactly ``id``), ``str[N_index]`` in file order (= gallery row)."""
    return _read_id_csv(path)


def read_test_csv(path: str | os.PathLike) -> np.ndarray:
    """Query-candidate ids of ``test.csv`` (column exactly ``id``), ``str[N_test]`` in file order."""
    return _read_id_csv(path)


def _usage_of(path: Path, usage_raw: str, line: int) -> str | None:
    key = usage_raw.lower()
    if key not in _USAGES:
        raise DataError(
            f"{path}: line {line}: unknown Usage {usage_raw!r} (expected Public, Private or Ignored)"
        )
    return _USAGES[key]


def read_retrieval_solution(
    path: str | os.PathLike,
    index_ids: Sequence[str] | np.ndarray | None = None,
    test_ids: Sequence[str] | np.ndarray | None = None,
    usage: str | None = None,
) -> pd.DataFrame:
    """Scored rows of ``retrieval_solution_v2.1.csv`` (columns exactly ``id,images,Usage``).

    With ``usage`` ("public" | "private") only that split's rows are read: the other rows are dropped as the
    file is parsed (their Usage is still checked) and never kept. While tuning
    (:func:`bctbench.evaluation.holdout.sealed`) only a validation set's selection may be read; anything else
    raises ``SealedTestSetError`` before the file is opened.

    A row is scored iff ``Usage`` is Public or Private (case-insensitive) and ``images != "None"``; rows with
    ``images == None`` or ``Usage == Ignored`` are skipped; any other Usage is an error naming the line.
    Returns a DataFrame in file order with ``id`` (str), ``usage`` ("public" | "private"), ``images``
    (tuple of index ids), ``line`` (int); with ``index_ids`` also ``gallery_rows`` (tuple of int64 row
    indices into ``index_ids``), and every solution id must be in ``index_ids`` (error naming the id and
    line); with ``test_ids`` every scored id must be in ``test_ids``.
    """
    path = Path(path)
    if usage is not None and usage not in GLDV2_PROTOCOLS:
        raise DataError(f"{path}: usage must be one of {', '.join(GLDV2_PROTOCOLS)} or None, got {usage!r}")
    check_ground_truth("gldv2", path, usage)

    def keep(fields: list[str], line: int) -> bool:
        return _usage_of(path, fields[2], line) == usage

    rows, lines = _read_csv_rows(path, ("id", "images", "Usage"), keep if usage is not None else None)
    ids = pd.Series([r[0] for r in rows], dtype=object)
    _check_ids(path, ids, np.asarray(lines, dtype=np.int64), what="test id")
    index_row = None if index_ids is None else {g: k for k, g in enumerate(index_ids)}
    test_set = None if test_ids is None else set(test_ids)
    out: dict[str, list[Any]] = {"id": [], "usage": [], "images": [], "line": []}
    if index_row is not None:
        out["gallery_rows"] = []
    for (qid, images, usage_raw), line in zip(rows, lines, strict=True):
        row_usage = _usage_of(path, usage_raw, line)
        if row_usage is None or images == "None":
            continue
        gallery = tuple(images.split())
        if not gallery:
            raise DataError(f"{path}: line {line}: empty images field for {qid} (use None for ignored rows)")
        if test_set is not None and qid not in test_set:
            raise DataError(f"{path}: line {line}: test id {qid} is not in test.csv")
        if index_row is not None:
            bad = [g for g in gallery if g not in index_row]
            if bad:
                raise DataError(f"{path}: line {line}: solution id {bad[0]} of {qid} is not in index.csv")
            out["gallery_rows"].append(tuple(index_row[g] for g in gallery))
        out["id"].append(qid)
        out["usage"].append(row_usage)
        out["images"].append(gallery)
        out["line"].append(line)
    return pd.DataFrame(out)


# ---------------------------------------------------------------------------------------------------------
# eval set


def load_gldv2_eval_set(
    gldv2_root: str | os.PathLike, name: str = "gldv2", usage: str | None = None
) -> GLDv2EvalSet:
    """GLDv2 retrieval eval set from ``index.csv``, ``test.csv`` and ``retrieval_solution_v2.1.csv``.

    Gallery = ``index.csv`` rows in file order; queries = scored solution rows (Public/Private, images !=
    None) in ``test.csv`` order, with ``solution[i]`` their gallery row indices and ``usage[i]`` "public" /
    "private". With ``usage`` ("public" | "private") the queries are that split's only (the other split's rows
    are not kept; e.g. the public split as validation data). Every gallery and query image file must exist.
    """
    root = Path(gldv2_root)
    index_path = find_metadata(root, INDEX_CSV)
    test_path = find_metadata(root, TEST_CSV)
    index_ids = read_index_csv(index_path)
    test_ids = read_test_csv(test_path)
    solution_path = find_metadata(root, SOLUTION_CSV)
    sol = read_retrieval_solution(solution_path, index_ids=index_ids, test_ids=test_ids, usage=usage)
    if sol.empty:
        wanted = usage.capitalize() if usage else "Public/Private"
        raise DataError(f"{solution_path}: no scored ({wanted}) query rows")
    test_pos = pd.Series(np.arange(test_ids.size), index=test_ids)
    sol = sol.iloc[np.argsort(test_pos.loc[sol["id"]].to_numpy(), kind="stable")].reset_index(drop=True)
    gallery_rel = _relpaths("index", pd.Series(index_ids, dtype=object))
    query_rel = _relpaths("test", sol["id"])
    _check_files_exist(root, pd.Series(index_ids, dtype=object), gallery_rel, index_path.name)
    _check_files_exist(root, sol["id"], query_rel, f"{test_path.name} (scored queries)")
    return GLDv2EvalSet(
        name=name,
        query_paths=tuple(root / p for p in query_rel),
        gallery_paths=tuple(root / p for p in gallery_rel),
        solution=tuple(tuple(int(r) for r in rows) for rows in sol["gallery_rows"]),
        usage=tuple(sol["usage"]),
    )


# ---------------------------------------------------------------------------------------------------------
# split files


def split_paths(
    gldv2_root: str | os.PathLike, allocation: str, splits_dir: str | os.PathLike | None = None
) -> tuple[Path, Path, Path]:
    """``(<allocation>.csv, <allocation>.lock.json, gldv2_clean.csv)`` in ``splits_dir`` (default
    ``<gldv2_root>/splits``)."""
    d = Path(splits_dir) if splits_dir is not None else Path(gldv2_root) / "splits"
    return d / f"{allocation}.csv", d / f"{allocation}.lock.json", d / CLEAN_SPLIT_CSV


def prepare_split(
    gldv2_root: str | os.PathLike,
    allocation: str,
    ratio: float = DEFAULT_RATIO,
    out_dir: str | os.PathLike | None = None,
) -> Path:
    """Derive ``gldv2_clean.csv`` from ``train_clean.csv`` (all files must exist), build ``allocation``,
    write ``<allocation>.csv`` and its lock into ``out_dir`` (default ``<gldv2_root>/splits``); return the
    split CSV path. Deterministic: re-running rewrites identical bytes. Files are replaced atomically."""
    root = Path(gldv2_root)
    split_csv, lock_path, clean_csv = split_paths(root, allocation, out_dir)
    src = find_metadata(root, TRAIN_CLEAN_CSV)
    clean = read_train_clean(src)
    clean["path"] = _relpaths("train", clean["image_id"])
    _check_files_exist(root, clean["image_id"], clean["path"], src.name)
    split = build_allocation(allocation, clean[["image_id", "label"]], ratio)
    _atomic_write(clean_csv, lambda f: clean.to_csv(f, index=False, lineterminator="\n"))
    _atomic_write(split_csv, lambda f: split.to_csv(f, index=False, lineterminator="\n"))
    n_classes = int(clean["label"].max()) + 1
    lock = {
        "schema_version": LOCK_SCHEMA_VERSION,
        "dataset": "gldv2",
        "allocation": allocation,
        "source_list": src.name,
        "source_sha256": _sha256(src),
        "label_list": "train_clean.csv derivation (docs/data_formats.md §3.2)",
        "ratio": ratio,
        "seeds": {"class_seed": CLASS_SEED, "data_base_seed": DATA_BASE_SEED},
        "num_classes": n_classes,
        "num_images": len(clean),
        "full_gldv2_clean": n_classes == EXPECTED_CLASSES and len(clean) == EXPECTED_IMAGES,
        "counts": allocation_counts(split),
        "clean_csv": clean_csv.name,
        "clean_csv_sha256": _sha256(clean_csv),
        "csv": split_csv.name,
        "csv_sha256": _sha256(split_csv),
    }
    _atomic_write(lock_path, lambda f: f.write(json.dumps(lock, indent=2, sort_keys=True) + "\n"))
    return split_csv


_LOCK_KEYS = ("allocation", "ratio", "csv_sha256", "clean_csv_sha256")


def _read_lock(lock_path: Path, split_csv: Path) -> dict[str, Any]:
    if not lock_path.is_file():
        raise DataError(
            f"{lock_path}: lock file of {split_csv.name} not found; re-run `bctbench prepare-data`"
        )
    try:
        lock = json.loads(lock_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{lock_path}: not valid JSON ({err}); re-run `bctbench prepare-data`") from err
    if not isinstance(lock, dict):
        raise DataError(f"{lock_path}: expected a JSON object; re-run `bctbench prepare-data`")
    for key in _LOCK_KEYS:
        if key not in lock:
            raise DataError(f"{lock_path}: missing key '{key}'; re-run `bctbench prepare-data`")
    return lock


def _verify(path: Path, expected: str, lock_path: Path) -> None:
    if not path.is_file():
        raise DataError(
            f"{path}: file not found (listed in lock {lock_path}); re-run `bctbench prepare-data`"
        )
    got = _sha256(path)
    if got != expected:
        raise DataError(
            f"{path}: sha256 mismatch with lock {lock_path} (lock {expected[:12]}..., file {got[:12]}...); "
            "re-run `bctbench prepare-data`"
        )


def load_split(
    gldv2_root: str | os.PathLike,
    allocation: str,
    *,
    splits_dir: str | os.PathLike | None = None,
    ratio: float | None = None,
) -> pd.DataFrame:
    """Load ``<allocation>.csv`` after checking its sha256 (and that of ``gldv2_clean.csv``) against the lock.

    Returns the split (standard schema, or the sequential ``label_step{k}``/``in_step{k}`` schema) plus
    ``path``: absolute image paths (str), row ``i`` = image ``i``. With ``ratio``, the lock's ratio must match.
    """
    root = Path(gldv2_root)
    split_csv, lock_path, clean_csv = split_paths(root, allocation, splits_dir)
    if not split_csv.is_file():
        raise DataError(
            f"{split_csv}: split file not found; run `bctbench prepare-data` (allocation {allocation})"
        )
    lock = _read_lock(lock_path, split_csv)
    if lock["allocation"] != allocation:
        raise DataError(f"{lock_path}: lock is for allocation {lock['allocation']!r}, not {allocation!r}")
    if ratio is not None and abs(float(lock["ratio"]) - ratio) > 1e-12:
        raise DataError(
            f"{lock_path}: split was prepared with ratio {lock['ratio']}, requested {ratio}; "
            "re-run `bctbench prepare-data` with that ratio"
        )
    _verify(split_csv, lock["csv_sha256"], lock_path)
    _verify(clean_csv, lock["clean_csv_sha256"], lock_path)
    split = pd.read_csv(split_csv, dtype={"image_id": str}, keep_default_na=False)
    clean = pd.read_csv(clean_csv, dtype={"image_id": str, "path": str}, keep_default_na=False)
    n_steps = num_steps(split)
    if n_steps:
        expected = [
            "image_id",
            *(f"label_step{k}" for k in range(n_steps)),
            *(f"in_step{k}" for k in range(n_steps)),
        ]
    else:
        expected = list(SPLIT_COLUMNS)
    if list(split.columns) != expected:
        raise DataError(f"{split_csv}: columns {','.join(split.columns)} != expected {','.join(expected)}")
    if len(split) != len(clean) or not (split["image_id"].to_numpy() == clean["image_id"].to_numpy()).all():
        raise DataError(
            f"{split_csv}: image ids differ from {clean_csv} row by row; re-run `bctbench prepare-data`"
        )
    for c in split.columns[1:]:
        split[c] = split[c].astype(bool if c.startswith("in_") or c == "is_old_class" else np.int64)
    split["path"] = str(root) + os.sep + clean["path"].str.replace("/", os.sep, regex=False)
    return split


# ---------------------------------------------------------------------------------------------------------
# LightningDataModule


class ImageList(NamedTuple):
    """An offline pass's input: ``paths`` (N), ``labels`` ``int64[N]`` (the requested model's label space),
    ``old_labels`` ``int64[N]`` (-1: none), ``index`` ``int64[N]`` (rows of the split CSV)."""

    paths: list[str]
    labels: np.ndarray
    old_labels: np.ndarray
    index: np.ndarray


class GLDv2DataModule(L.LightningDataModule):
    """Training data of one side (``stage="old"`` or ``"new"``) of a GLDv2 allocation.

    Batches are dicts: ``images float[B, 3, H, W]`` (:meth:`train_transform`), ``labels
    int64[B]`` in the served model's label space (old stage: ``old_label``; new stage: ``label``),
    ``old_labels int64[B]`` (-1 if the old model has no such class), ``index int64[B]`` (row in the split
    CSV). For sequential allocations ``step`` = k selects the upgrade k -> k+1 (old = step k, new = step k+1).

    ``sampler=None`` shuffles with a ``seed``-ed generator; ``"class_balanced"`` uses
    :class:`~bctbench.data.ClassBalancedSampler` (``m_per_class`` images of ``batch_size // m_per_class``
    classes per batch; shards over the trainer's ranks itself). ``prepare_data()`` writes the split if it is
    missing; ``setup()`` (also triggered by the properties) loads and lock-checks it.
    """

    def __init__(
        self,
        gldv2_root: str | os.PathLike,
        allocation: str,
        stage: str = "new",
        image_size: int = 224,
        batch_size: int = 64,
        num_workers: int = 4,
        sampler: str | None = None,
        m_per_class: int = 4,
        seed: int = 0,
        skip_corrupt: bool = False,
        ratio: float = DEFAULT_RATIO,
        drop_last: bool = True,
        step: int | None = None,
        splits_dir: str | os.PathLike | None = None,
        augmentation: str = "rrc_flip",
        resize: str = "squash",
        cache_decoded: bool = False,
    ) -> None:
        super().__init__()
        if augmentation not in ("rrc_flip", "none"):
            raise ConfigError(
                f"GLDv2DataModule: augmentation must be 'rrc_flip' or 'none', got {augmentation!r}"
            )
        if stage not in ("old", "new"):
            raise ConfigError(f"GLDv2DataModule: stage must be 'old' or 'new', got {stage!r}")
        if sampler not in (None, "class_balanced"):
            raise ConfigError(f"GLDv2DataModule: sampler must be None or 'class_balanced', got {sampler!r}")
        if allocation in SEQUENTIAL_ALLOCATIONS and step is None:
            raise ConfigError(
                f"GLDv2DataModule: sequential allocation {allocation!r} needs step (upgrade step -> step+1)"
            )
        if allocation not in SEQUENTIAL_ALLOCATIONS and step is not None:
            raise ConfigError(
                f"GLDv2DataModule: step is only valid for sequential allocations, not {allocation!r}"
            )
        self.gldv2_root = Path(gldv2_root)
        self.allocation = allocation
        self.stage = stage
        self.step = step
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.sampler = sampler
        self.m_per_class = m_per_class
        self.seed = seed
        self.skip_corrupt = skip_corrupt
        self.ratio = ratio
        self.drop_last = drop_last
        self.splits_dir = splits_dir
        self.augmentation = augmentation
        self.resize = resize
        self.cache_decoded = cache_decoded
        self.split: pd.DataFrame | None = None  # standard schema + path, after setup()
        self.train_dataset: ImageListDataset | None = None

    # -- lifecycle
    def prepare_data(self) -> None:
        split_csv, _, _ = split_paths(self.gldv2_root, self.allocation, self.splits_dir)
        if not split_csv.is_file():
            prepare_split(self.gldv2_root, self.allocation, self.ratio, self.splits_dir)

    def setup(self, stage: str | None = None) -> None:
        if self.split is not None:
            return
        df = load_split(self.gldv2_root, self.allocation, splits_dir=self.splits_dir, ratio=self.ratio)
        if self.step is not None:
            path = df["path"]
            df = sequential_pair(df, self.step)
            df["path"] = path.to_numpy()
        self.split = df
        rows = self._served_rows()
        labels = self._served_labels()[rows]
        if rows.size == 0:
            raise DataError(f"{self._split_file()}: no images for the {self.stage} model")
        if labels.min() < 0:
            raise DataError(
                f"{self._split_file()}: row {int(rows[np.argmin(labels)])} trains the {self.stage} model but has no label"
            )

    def _split_file(self) -> Path:
        return split_paths(self.gldv2_root, self.allocation, self.splits_dir)[0]

    def _loaded(self) -> pd.DataFrame:
        if self.split is None:
            self.setup()
        assert self.split is not None
        return self.split

    def _served_rows(self, stage: str | None = None) -> np.ndarray:
        stage = stage or self.stage
        return np.flatnonzero(self._loaded()["in_old" if stage == "old" else "in_new"].to_numpy(dtype=bool))

    def _served_labels(self, stage: str | None = None) -> np.ndarray:
        stage = stage or self.stage
        return self._loaded()["old_label" if stage == "old" else "label"].to_numpy(dtype=np.int64)

    # -- label spaces
    @property
    def num_old_classes(self) -> int:
        """Size of the old model's label space."""
        return int(self._loaded()["old_label"].max()) + 1

    @property
    def num_new_classes(self) -> int:
        """Size of the new model's label space."""
        return int(self._loaded()["label"].max()) + 1

    @property
    def num_classes(self) -> int:
        """Size of the served model's label space (old or new, per ``stage``)."""
        return self.num_old_classes if self.stage == "old" else self.num_new_classes

    @property
    def train_labels(self) -> np.ndarray:
        """``int64[N_train]``: labels of the served training images, in dataset order."""
        return self._served_labels()[self._served_rows()]

    def train_image_paths_and_labels(self, stage: str | None = None) -> ImageList:
        """Training images of the ``stage`` ("old" | "new", default: the served one) model for offline passes
        (no transform, no sampling): paths, labels in that model's label space, old labels, split rows."""
        stage = stage or self.stage
        if stage not in ("old", "new"):
            raise ConfigError(f"stage must be 'old' or 'new', got {stage!r}")
        df = self._loaded()
        rows = self._served_rows(stage)
        return ImageList(
            paths=df["path"].to_numpy()[rows].tolist(),
            labels=self._served_labels(stage)[rows],
            old_labels=df["old_label"].to_numpy(dtype=np.int64)[rows],
            index=rows.astype(np.int64),
        )

    # -- loaders
    def _world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 1, 0
        return int(trainer.world_size), int(trainer.global_rank)

    def train_transform(self):
        """``rrc_flip``: random resized crop + flip; ``none``: the test transform (the AdvBCT recipe trains
        on Resize((s, s)) without augmentation)."""
        if self.augmentation == "none":
            return build_test_transform(self.image_size, self.resize)
        if self.sampler is None:  # decoded pixels; the random crop/flip happen batched (augment_batch)
            return pil_to_uint8
        return build_train_transform(self.image_size)

    def train_dataloader(self) -> ImageLoader:
        items = self.train_image_paths_and_labels()
        self.train_dataset = ImageListDataset(
            items.paths,
            items.labels,
            transform=self.train_transform(),
            old_labels=items.old_labels,
            indices=items.index,
            skip_corrupt=self.skip_corrupt,
            cache_decoded=self.cache_decoded,
        )
        common: dict[str, Any] = {
            "batch_size": self.batch_size,
            "num_workers": self.num_workers,
            "drop_last": self.drop_last,
            "pin_memory": torch.cuda.is_available(),
            "persistent_workers": self.num_workers > 0,
            "generator": torch.Generator().manual_seed(self.seed),
        }
        if self.sampler == "class_balanced":
            num_replicas, rank = self._world()
            sampler = ClassBalancedSampler(
                items.labels,
                self.m_per_class,
                self.batch_size,
                self.seed,
                num_replicas=num_replicas,
                rank=rank,
            )
            return ImageLoader(self.train_dataset, sampler=sampler, **common)
        # order and augmentation from (seed, epoch, index): an interrupted run resumes exactly
        crop = RRC_SCALE if self.augmentation == "rrc_flip" else None
        ordered = EpochSeededDataset(self.train_dataset, self.seed, crop_scale=crop)
        if crop is not None and self.num_workers > 0:  # augment in the workers, batched; else on the device
            common["collate_fn"] = AugmentingCollate(self.image_size)
        return ImageLoader(ordered, sampler=EpochShuffleSampler(len(ordered), self.seed), **common)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """On the training device: tensor augmentation of the whole batch (crop, resize, flip, normalise;
        :func:`~bctbench.data.augment_batch`) when it carries crop boxes, then images in channels-last
        layout (the models' convolutions run 1.3-2x faster so; values are unchanged)."""
        if isinstance(batch, dict):
            batch = dict(batch)
            if "crop_box" in batch:
                batch["images"] = augment_batch(
                    batch["images"], batch.pop("crop_box"), batch.pop("flip"), self.image_size
                )
            images = batch.get("images")
            if isinstance(images, torch.Tensor) and images.dim() == 4 and images.is_floating_point():
                batch["images"] = images.contiguous(memory_format=torch.channels_last)
        return batch
