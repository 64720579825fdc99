"""Old/new split logic of the allocations (``docs/data_formats.md`` §4), pure NumPy/pandas, no I/O.

Inputs are a *source list*: a DataFrame with columns ``image_id`` (str) and ``label`` (int, the original
class index 0..C-1, contiguous) whose rows are ordered by label, then within-class list order (GLDv2: the
derivation of ``docs/data_formats.md`` §3.2). Every allocation returns one row per source row, **in source
order** (row ``i`` of a split is row ``i`` of the source list), so a split CSV row index is a stable image
index.

Standard schema (§3.3), :data:`SPLIT_COLUMNS`:

* ``image_id`` str;
* ``label`` int64: class index in the **new** model's label space, -1 if the new model has no such class
  (only ``openclass30to70``: the old classes);
* ``old_label`` int64: class index in the old model's label space, -1 if the old model has no such class;
* ``is_old_class`` bool = ``old_label >= 0``;
* ``in_old`` / ``in_new`` bool: the image trains the old / new model.

Sequential allocations (§4.5) have ``image_id`` and, per step ``k``, ``label_step{k}`` (int64, the class's
index in step ``k``'s label space, -1 if the class is absent at step ``k``; a class-level property) and
``in_step{k}`` (bool, the image trains the step-``k`` model). :func:`sequential_pair` turns step ``k -> k+1``
into the standard schema.

RNG: NumPy's legacy ``RandomState`` (MT19937), exactly as the reference ``np.random.seed`` +
``np.random.shuffle`` (never ``default_rng``). Golden values: ``docs/data_formats.md`` §8.

Bare § numbers in this module refer to ``docs/data_formats.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from bctbench.errors import ConfigError

CLASS_SEED = 666
DATA_BASE_SEED = 666
DEFAULT_RATIO = 0.3

SPLIT_COLUMNS = ("image_id", "label", "old_label", "is_old_class", "in_old", "in_new")

__all__ = [
    "ALLOCATIONS",
    "CLASS_SEED",
    "DATA_BASE_SEED",
    "DEFAULT_RATIO",
    "SEQUENTIAL_ALLOCATIONS",
    "SPLIT_COLUMNS",
    "allocation_counts",
    "build_allocation",
    "class30to100",
    "class_permutation",
    "class_split",
    "data30to100",
    "data_split",
    "nested_data_split",
    "nested_labels",
    "num_steps",
    "openclass30to70",
    "opendata30to70",
    "relabel_old_first",
    "seq_class10to30to100",
    "seq_data10to30to100",
    "sequential_pair",
    "within_class_permutation",
]


# ---------------------------------------------------------------------------------------------------------
# class and data splits


def class_permutation(num_classes: int, seed: int = CLASS_SEED) -> np.ndarray:
    """``int64[C]``: ``arange(C)`` shuffled by ``RandomState(seed)`` (== ``np.random.seed(seed)`` +
    ``np.random.shuffle``). §4.1 takes prefixes of it."""
    a = np.arange(int(num_classes), dtype=np.int64)
    np.random.RandomState(seed).shuffle(a)
    return a


def class_split(num_classes: int, ratio: float = DEFAULT_RATIO, seed: int = CLASS_SEED) -> np.ndarray:
    """Sorted old class ids, ``int64[int(C * ratio)]``: the first ``int(C * ratio)`` entries of
    :func:`class_permutation` (§4.1; C = 81,313 gives 24,393 classes)."""
    return np.sort(class_permutation(num_classes, seed)[: int(num_classes * ratio)])


def within_class_permutation(n: int, class_index: int, base_seed: int = DATA_BASE_SEED) -> np.ndarray:
    """``int64[n]``: ``arange(n)`` shuffled by ``RandomState(base_seed + class_index)`` (§4.2)."""
    p = np.arange(int(n), dtype=np.int64)
    np.random.RandomState(base_seed + int(class_index)).shuffle(p)
    return p


def _class_offsets(class_sizes: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(class_sizes)[:-1]]).astype(np.int64)


def _check_sizes(class_sizes: Sequence[int] | np.ndarray) -> np.ndarray:
    sizes = np.asarray(class_sizes, dtype=np.int64).reshape(-1)
    if sizes.size and sizes.min() < 0:
        raise ValueError("class_sizes must be non-negative")
    return sizes


def _subset_rule(class_sizes: np.ndarray, take: Callable[[int], int], base_seed: int) -> np.ndarray:
    """Shared §4.2/§4.5 rule over classes given by ``class_sizes`` (n per class, classes 0..C-1 in order).

    n == 1 -> the image; 2 <= n <= 3 -> the first; n >= 4 -> positions ``p[:take(n)]`` of
    ``p = within_class_permutation(n, i, base_seed)``. Returns ``bool[sum(class_sizes)]`` in global order.
    """
    offsets = _class_offsets(class_sizes)
    n_total = int(class_sizes.sum())
    selected = np.zeros(n_total, dtype=bool)
    small = (class_sizes >= 1) & (class_sizes <= 3)
    selected[offsets[small]] = True  # n == 1: the image; n = 2, 3: the first image
    rs = np.random.RandomState()
    for i in np.flatnonzero(class_sizes >= 4).tolist():  # the per-class RNG rule needs one shuffle per class
        n = int(class_sizes[i])
        rs.seed(base_seed + i)
        p = np.arange(n, dtype=np.int64)
        rs.shuffle(p)
        selected[offsets[i] + p[: take(n)]] = True
    return selected


def data_split(
    class_sizes: Sequence[int] | np.ndarray, ratio: float = DEFAULT_RATIO, base_seed: int = DATA_BASE_SEED
) -> np.ndarray:
    """``bool[N]`` "in_old" over all images in global order (class 0's images in list order, then class 1,
    ...), ``N = sum(class_sizes)`` (§4.2).

    Per class i with n images: n = 1 -> old (it is also in the new-side file: in both); n = 2, 3 -> the first
    image; n >= 4 -> positions ``p[:max(1, int(ratio * n))]`` of ``p = RandomState(base_seed + i)`` shuffle of
    ``arange(n)``. The ``max(1, .)`` only matters for ratio < 0.25 (every class keeps an old image); at the
    default 0.3 this is exactly the reference ``int(0.3 * n)``.
    """
    sizes = _check_sizes(class_sizes)
    return _subset_rule(sizes, lambda n: max(1, int(ratio * n)), base_seed)


def nested_data_split(
    class_sizes: Sequence[int] | np.ndarray, parent: np.ndarray, base_seed: int = DATA_BASE_SEED
) -> np.ndarray:
    """``bool[N]`` subset of ``parent`` (``bool[N]``, global order) by the §4.5 D0 rule.

    Per class i with m = number of parent images of class i (in list order): m <= 1 -> all; 2 <= m <= 3 ->
    the first; m >= 4 -> positions ``p[:m // 3]`` of ``p = RandomState(base_seed + i)`` permutation of
    ``arange(m)``, kept in list order.
    """
    sizes = _check_sizes(class_sizes)
    parent = np.asarray(parent, dtype=bool).reshape(-1)
    if parent.size != sizes.sum():
        raise ValueError(f"parent has {parent.size} entries for {int(sizes.sum())} images")
    labels = np.repeat(np.arange(sizes.size, dtype=np.int64), sizes)
    rows = np.flatnonzero(parent)  # global rows of the parent images, still grouped by class, list order
    sub_sizes = np.bincount(labels[rows], minlength=sizes.size).astype(np.int64)
    chosen = _subset_rule(sub_sizes, lambda m: m // 3, base_seed)
    out = np.zeros(parent.size, dtype=bool)
    out[rows[chosen]] = True
    return out


# ---------------------------------------------------------------------------------------------------------
# relabelling


def relabel_old_first(num_classes: int, old_classes: np.ndarray) -> np.ndarray:
    """AdvBCT relabelling, ``int64[C]`` original label -> new label: the old classes get 0..K-1 in increasing
    original label order, all others K..C-1 in increasing original label order."""
    return nested_labels(num_classes, [np.asarray(old_classes), np.arange(num_classes)])[-1]


def nested_labels(num_classes: int, class_sets: Sequence[np.ndarray]) -> np.ndarray:
    """``int64[K, C]`` labels of nested class sets S_0 ⊂ S_1 ⊂ ... ⊂ S_{K-1} (original class ids).

    Row k maps original class -> label at step k (-1 if absent): S_{k-1}'s classes keep their step-(k-1)
    labels, the classes new in S_k follow in increasing original label order (the AdvBCT rule, applied
    recursively; row 0 numbers S_0 in increasing original order).
    """
    out = np.full((len(class_sets), num_classes), -1, dtype=np.int64)
    prev = np.zeros(num_classes, dtype=bool)
    prev_labels = np.full(num_classes, -1, dtype=np.int64)
    for k, s in enumerate(class_sets):
        member = np.zeros(num_classes, dtype=bool)
        member[np.asarray(s, dtype=np.int64)] = True
        if (prev & ~member).any():
            raise ValueError(f"class set {k} does not contain class set {k - 1}")
        labels = prev_labels.copy()
        added = np.flatnonzero(member & ~prev)
        labels[added] = int(prev.sum()) + np.arange(added.size, dtype=np.int64)
        out[k] = labels
        prev, prev_labels = member, labels
    return out


# ---------------------------------------------------------------------------------------------------------
# allocations


def _source_arrays(source: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image_ids object[N], labels int64[N], class_sizes int64[C]) of a validated source list."""
    missing = [c for c in ("image_id", "label") if c not in source.columns]
    if missing:
        raise ValueError(f"source list lacks column(s) {missing}")
    labels = source["label"].to_numpy(dtype=np.int64)
    if labels.size == 0:
        raise ValueError("source list is empty")
    if labels[0] != 0 or (np.diff(labels) < 0).any() or (np.diff(labels) > 1).any():
        raise ValueError(
            "source list labels must be contiguous 0..C-1 and sorted ascending (grouped by class)"
        )
    sizes = np.bincount(labels).astype(np.int64)
    return source["image_id"].to_numpy(dtype=object), labels, sizes


def _frame(image_ids: np.ndarray, label: np.ndarray, old_label: np.ndarray, in_old, in_new) -> pd.DataFrame:
    n = image_ids.size
    return pd.DataFrame(
        {
            "image_id": pd.Series(image_ids, dtype=object).astype(str),
            "label": label.astype(np.int64),
            "old_label": old_label.astype(np.int64),
            "is_old_class": old_label >= 0,
            "in_old": np.broadcast_to(np.asarray(in_old, dtype=bool), (n,)).copy(),
            "in_new": np.broadcast_to(np.asarray(in_new, dtype=bool), (n,)).copy(),
        }
    )


def class30to100(source: pd.DataFrame, ratio: float = DEFAULT_RATIO, seed: int = CLASS_SEED) -> pd.DataFrame:
    """Extended-class (§4.1): old = images of :func:`class_split` classes, new = all images.

    ``label`` = AdvBCT order (old classes 0..K-1, then the rest); ``old_label`` = ``label`` for old classes,
    -1 otherwise; ``in_old`` = class is old; ``in_new`` = True.
    """
    ids, labels, sizes = _source_arrays(source)
    old = class_split(sizes.size, ratio, seed)
    new_of = relabel_old_first(sizes.size, old)
    label = new_of[labels]
    is_old = np.isin(labels, old)
    return _frame(ids, label, np.where(is_old, label, -1), is_old, True)


def openclass30to70(
    source: pd.DataFrame, ratio: float = DEFAULT_RATIO, seed: int = CLASS_SEED
) -> pd.DataFrame:
    """Open-class (§4.4): old = images of the :func:`class_split` classes (``old_label`` 0..K-1 in increasing
    original order), new = images of the other classes only (``label`` 0..C-K-1 in increasing original
    order). Disjoint label spaces: old-class rows have ``label = -1``, new-class rows ``old_label = -1``."""
    ids, labels, sizes = _source_arrays(source)
    old = class_split(sizes.size, ratio, seed)
    is_old_c = np.zeros(sizes.size, dtype=bool)
    is_old_c[old] = True
    old_of = np.where(is_old_c, np.cumsum(is_old_c) - 1, -1)
    new_of = np.where(~is_old_c, np.cumsum(~is_old_c) - 1, -1)
    is_old = is_old_c[labels]
    return _frame(ids, new_of[labels], old_of[labels], is_old, ~is_old)


def data30to100(
    source: pd.DataFrame, ratio: float = DEFAULT_RATIO, base_seed: int = DATA_BASE_SEED
) -> pd.DataFrame:
    """Extended-data (§4.2): old = :func:`data_split`, new = all images; labels unchanged
    (``old_label = label``; the old classifier has all C classes)."""
    ids, labels, sizes = _source_arrays(source)
    return _frame(ids, labels, labels, data_split(sizes, ratio, base_seed), True)


def opendata30to70(
    source: pd.DataFrame, ratio: float = DEFAULT_RATIO, base_seed: int = DATA_BASE_SEED
) -> pd.DataFrame:
    """Open-data (§4.4): old = :func:`data_split`, new = the reference's new-side file (the images not old,
    plus singleton classes, which are in both); labels unchanged."""
    ids, labels, sizes = _source_arrays(source)
    in_old = data_split(sizes, ratio, base_seed)
    singleton = (sizes == 1)[labels]
    return _frame(ids, labels, labels, in_old, ~in_old | singleton)


def _seq_frame(ids: np.ndarray, step_labels: np.ndarray, step_in: Sequence[np.ndarray]) -> pd.DataFrame:
    cols: dict[str, object] = {"image_id": pd.Series(ids, dtype=object).astype(str)}
    for k in range(step_labels.shape[0]):
        cols[f"label_step{k}"] = step_labels[k]
    for k, mask in enumerate(step_in):
        cols[f"in_step{k}"] = np.asarray(mask, dtype=bool)
    return pd.DataFrame(cols)


def seq_data10to30to100(
    source: pd.DataFrame, ratio: float = DEFAULT_RATIO, base_seed: int = DATA_BASE_SEED
) -> pd.DataFrame:
    """Sequential data (§4.5), 3 steps: D2 = all images, D1 = :func:`data_split` (``ratio``), D0 =
    :func:`nested_data_split` of D1 (about ``ratio / 3``). Labels unchanged at every step."""
    ids, labels, sizes = _source_arrays(source)
    d1 = data_split(sizes, ratio, base_seed)
    d0 = nested_data_split(sizes, d1, base_seed)
    step_labels = np.stack([labels, labels, labels])
    return _seq_frame(ids, step_labels, [d0, d1, np.ones(labels.size, dtype=bool)])


def seq_class10to30to100(
    source: pd.DataFrame, ratio: float = DEFAULT_RATIO, seed: int = CLASS_SEED
) -> pd.DataFrame:
    """Sequential classes (§4.5), 3 steps: nested prefixes ``a[:int(C * ratio/3)] ⊂ a[:int(C * ratio)] ⊂ all``
    of :func:`class_permutation` (ratio 0.3: 8,131 ⊂ 24,393 ⊂ 81,313 classes); labels by
    :func:`nested_labels`; an image trains step k iff its class is present at step k."""
    ids, labels, sizes = _source_arrays(source)
    c = sizes.size
    a = class_permutation(c, seed)
    prefixes = [a[: int(c * round(ratio / 3, 10))], a[: int(c * ratio)], a]
    per_class = nested_labels(c, prefixes)  # [3, C]
    step_labels = per_class[:, labels]
    return _seq_frame(ids, step_labels, [step_labels[k] >= 0 for k in range(3)])


ALLOCATIONS: dict[str, Callable[..., pd.DataFrame]] = {
    "class30to100": class30to100,
    "data30to100": data30to100,
    "openclass30to70": openclass30to70,
    "opendata30to70": opendata30to70,
    "seq_data10to30to100": seq_data10to30to100,
    "seq_class10to30to100": seq_class10to30to100,
}
SEQUENTIAL_ALLOCATIONS = frozenset({"seq_data10to30to100", "seq_class10to30to100"})


def build_allocation(name: str, source: pd.DataFrame, ratio: float = DEFAULT_RATIO) -> pd.DataFrame:
    """Run allocation ``name`` (a key of :data:`ALLOCATIONS`) on ``source`` with the default seeds."""
    if name not in ALLOCATIONS:
        raise ConfigError(f"unknown allocation {name!r}; valid: {', '.join(sorted(ALLOCATIONS))}")
    if not 0.0 < ratio < 1.0:
        raise ConfigError(f"allocation ratio must be in (0, 1), got {ratio}")
    return ALLOCATIONS[name](source, ratio)


# ---------------------------------------------------------------------------------------------------------
# sequential helpers and summaries


def num_steps(df: pd.DataFrame) -> int:
    """Number of steps of a sequential split (count of ``in_step{k}`` columns); 0 for a standard one."""
    k = 0
    while f"in_step{k}" in df.columns:
        k += 1
    return k


def sequential_pair(df: pd.DataFrame, step: int) -> pd.DataFrame:
    """Standard-schema split (:data:`SPLIT_COLUMNS`) of the upgrade ``step -> step + 1`` of a sequential
    split: ``label = label_step{step+1}``, ``old_label = label_step{step}``, ``in_old = in_step{step}``,
    ``in_new = in_step{step+1}``. Rows (and their order) are unchanged."""
    n = num_steps(df)
    if not 0 <= step < n - 1:
        raise ConfigError(
            f"sequential split has steps 0..{n - 1}: upgrade step must be in [0, {n - 2}], got {step}"
        )
    old_label = df[f"label_step{step}"].to_numpy(dtype=np.int64)
    return pd.DataFrame(
        {
            "image_id": df["image_id"],
            "label": df[f"label_step{step + 1}"].to_numpy(dtype=np.int64),
            "old_label": old_label,
            "is_old_class": old_label >= 0,
            "in_old": df[f"in_step{step}"].to_numpy(dtype=bool),
            "in_new": df[f"in_step{step + 1}"].to_numpy(dtype=bool),
        }
    )


def allocation_counts(df: pd.DataFrame) -> dict[str, int | list[int]]:
    """Class and image counts of a split, for lock files and sanity checks.

    Standard: ``num_images``, ``old_images``, ``new_images``, ``num_old_classes``, ``num_new_classes``
    (label-space sizes). Sequential: ``num_images``, ``step_images`` and ``step_classes`` (lists per step).
    """
    n_steps = num_steps(df)
    if n_steps:
        return {
            "num_images": len(df),
            "step_images": [int(df[f"in_step{k}"].sum()) for k in range(n_steps)],
            "step_classes": [int(df[f"label_step{k}"].max()) + 1 for k in range(n_steps)],
        }
    return {
        "num_images": len(df),
        "old_images": int(df["in_old"].sum()),
        "new_images": int(df["in_new"].sum()),
        "num_old_classes": int(df["old_label"].max()) + 1,
        "num_new_classes": int(df["label"].max()) + 1,
    }
