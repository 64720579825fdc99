"""Split logic: golden values of docs/data_formats.md §8, rule tests, allocation schemas, sequential steps."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from bctbench.datamodules import splits as S
from bctbench.errors import ConfigError

C_GLDV2 = 81_313


# ------------------------------------------------------------------------------------------ class split golden


def test_class_permutation_golden_prefix():
    a = S.class_permutation(C_GLDV2, 666)
    assert a[:10].tolist() == [80958, 51640, 47583, 49961, 36200, 49080, 30853, 19823, 5297, 70793]


def test_class_split_golden():
    old = S.class_split(C_GLDV2, 0.3, 666)
    assert old.size == 24_393
    assert old[:10].tolist() == [1, 4, 7, 14, 22, 24, 26, 28, 32, 43]
    assert old[-5:].tolist() == [81297, 81298, 81302, 81306, 81310]
    assert int(old.sum()) == 989_789_895
    digest = hashlib.sha256("".join(f"{x}\n" for x in old.tolist()).encode()).hexdigest()
    assert digest == "2cac36ef7cc4e530f2c92f74a3c942eceac3673c1e4221edf507c66a15772f38"
    assert int(0.1 * C_GLDV2) == 8_131


def test_class_split_matches_legacy_global_rng():
    # the reference uses the legacy global RNG on purpose; restore its state afterwards
    state = np.random.get_state()  # noqa: NPY002
    try:
        np.random.seed(666)  # noqa: NPY002
        a = np.arange(1000)
        np.random.shuffle(a)  # noqa: NPY002
    finally:
        np.random.set_state(state)  # noqa: NPY002
    assert S.class_split(1000).tolist() == sorted(a[:300].tolist())


# ------------------------------------------------------------------------------------------- data split golden

GOLDEN_DATA = [
    (0, 10, [5, 7, 0, 9, 3, 4, 8, 1, 6, 2], [0, 5, 7]),
    (5, 4, [0, 2, 1, 3], [0]),
    (123, 7, [6, 4, 5, 0, 1, 2, 3], [4, 6]),
    (81312, 20, [14, 7, 8, 10, 3, 1, 12, 4, 0, 2, 11, 18, 5, 15, 9, 16, 19, 17, 13, 6], [1, 3, 7, 8, 10, 14]),
]


@pytest.mark.parametrize(("cls", "n", "perm", "old_pos"), GOLDEN_DATA)
def test_within_class_permutation_golden(cls, n, perm, old_pos):
    assert S.within_class_permutation(n, cls, 666).tolist() == perm


def test_data_split_golden_positions():
    sizes = np.ones(C_GLDV2, dtype=np.int64)
    for cls, n, _, _ in GOLDEN_DATA:
        sizes[cls] = n
    in_old = S.data_split(sizes)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    for cls, n, _, old_pos in GOLDEN_DATA:
        assert np.flatnonzero(in_old[offsets[cls] : offsets[cls] + n]).tolist() == old_pos
    singles = sizes == 1
    assert in_old[offsets[singles]].all()


def test_data_split_rules():
    sizes = np.array([1, 2, 3, 4, 5, 6, 7, 10, 1, 3])
    in_old = S.data_split(sizes)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    per_class = [in_old[o : o + n] for o, n in zip(offsets, sizes, strict=True)]
    assert [int(p.sum()) for p in per_class] == [1, 1, 1, 1, 1, 1, 2, 3, 1, 1]  # int() truncation
    for p, n in zip(per_class, sizes, strict=True):
        if 2 <= n <= 3:
            assert p.tolist() == [True] + [False] * (n - 1)  # the first image
    df = S.data30to100(_source(sizes))
    alt = S.opendata30to70(_source(sizes))
    # union of the old and the new-side (70 %) files covers everything; intersection = singletons only
    assert (alt["in_old"] | alt["in_new"]).all()
    both = np.flatnonzero(alt["in_old"] & alt["in_new"])
    singleton_rows = offsets[sizes == 1]
    assert both.tolist() == singleton_rows.tolist()
    assert df["in_new"].all() and (df["in_old"].to_numpy() == in_old).all()


def test_data_split_small_ratio_keeps_one_image_per_class():
    in_old = S.data_split([4, 9, 1], ratio=0.1)
    assert in_old[:4].sum() == 1 and in_old[4:13].sum() == 1 and in_old[13]


# ------------------------------------------------------------------------------------------------ allocations


def _source(sizes) -> pd.DataFrame:
    labels = np.repeat(np.arange(len(sizes)), sizes)
    return pd.DataFrame({"image_id": [f"{i:016x}" for i in range(labels.size)], "label": labels})


def _check_schema(df: pd.DataFrame, n: int) -> None:
    assert tuple(df.columns) == S.SPLIT_COLUMNS and len(df) == n
    assert df["label"].dtype == np.int64 and df["old_label"].dtype == np.int64
    for c in ("is_old_class", "in_old", "in_new"):
        assert df[c].dtype == bool
    assert (df["is_old_class"] == (df["old_label"] >= 0)).all()


def test_class30to100_relabelling():
    sizes = np.arange(1, 21)  # 20 classes
    src = _source(sizes)
    df = S.class30to100(src)
    _check_schema(df, len(src))
    old = S.class_split(20)  # 6 classes
    is_old = np.isin(src["label"], old)
    assert (df["in_old"] == is_old).all() and df["in_new"].all()
    # old classes keep 0..K-1 in increasing original order, then the others in increasing original order
    mapping = df.groupby(src["label"])["label"].first().to_numpy()
    expected = np.empty(20, dtype=np.int64)
    expected[old] = np.arange(old.size)
    expected[np.setdiff1d(np.arange(20), old)] = np.arange(old.size, 20)
    assert mapping.tolist() == expected.tolist()
    assert (df["old_label"] == np.where(is_old, df["label"], -1)).all()
    assert (df["image_id"] == src["image_id"]).all()  # rows stay in source order


def test_openclass30to70_disjoint_label_spaces():
    src = _source(np.full(20, 2))
    df = S.openclass30to70(src)
    _check_schema(df, 40)
    assert not (df["in_old"] & df["in_new"]).any() and (df["in_old"] | df["in_new"]).all()
    assert sorted(set(df.loc[df["in_old"], "old_label"])) == list(range(6))
    assert sorted(set(df.loc[df["in_new"], "label"])) == list(range(14))
    assert (df.loc[df["in_new"], "old_label"] == -1).all() and (df.loc[df["in_old"], "label"] == -1).all()
    # increasing original label order inside each space
    assert df.loc[df["in_new"], "label"].is_monotonic_increasing
    assert df.loc[df["in_old"], "old_label"].is_monotonic_increasing


def test_data30to100_labels_unchanged():
    src = _source([1, 5, 2, 8])
    df = S.data30to100(src)
    _check_schema(df, 16)
    assert (df["label"] == src["label"]).all() and (df["old_label"] == src["label"]).all()


def test_seq_data_nested_and_d0_rule():
    sizes = np.array([1, 2, 3, 4, 10, 20, 40])
    df = S.seq_data10to30to100(_source(sizes))
    assert S.num_steps(df) == 3
    d0, d1, d2 = (df[f"in_step{k}"].to_numpy() for k in range(3))
    assert d2.all() and not (d0 & ~d1).any() and not (d1 & ~d2).any()
    assert (d1 == S.data_split(sizes)).all()
    labels = np.repeat(np.arange(sizes.size), sizes)
    m = np.bincount(labels[d1], minlength=sizes.size)  # [1, 1, 1, 1, 3, 6, 12]
    m0 = np.bincount(labels[d0], minlength=sizes.size)
    expected = [m_ if m_ <= 1 else 1 if m_ <= 3 else m_ // 3 for m_ in m]
    assert m0.tolist() == expected
    # class 6 (m = 12): positions p[:4] of RandomState(666 + 6) over its D1 images, kept in D1 order
    rows1 = np.flatnonzero(d1 & (labels == 6))
    p = S.within_class_permutation(12, 6)
    assert np.flatnonzero(d0 & (labels == 6)).tolist() == sorted(rows1[p[:4]].tolist())
    # class 4 (m = 3): the first D1 image
    assert np.flatnonzero(d0 & (labels == 4)).tolist() == [np.flatnonzero(d1 & (labels == 4))[0]]
    for k in range(3):
        assert (df[f"label_step{k}"] == labels).all()


def test_seq_class_nested_prefixes_and_relabelling():
    c = 100
    df = S.seq_class10to30to100(_source(np.full(c, 2)))
    a = S.class_permutation(c)
    per_class = (
        df.groupby(np.repeat(np.arange(c), 2))[[f"label_step{k}" for k in range(3)]].first().to_numpy().T
    )
    s0, s1 = np.sort(a[:10]), np.sort(a[:30])
    assert np.flatnonzero(per_class[0] >= 0).tolist() == s0.tolist()
    assert np.flatnonzero(per_class[1] >= 0).tolist() == s1.tolist()
    assert (per_class[2] >= 0).all()
    assert per_class[0][s0].tolist() == list(range(10))
    assert per_class[1][s0].tolist() == list(range(10))  # step-0 classes keep their labels
    added = np.setdiff1d(s1, s0)
    assert per_class[1][added].tolist() == list(range(10, 30))  # then increasing original order
    assert per_class[2][s1].tolist() == per_class[1][s1].tolist()
    assert per_class[2][np.setdiff1d(np.arange(c), s1)].tolist() == list(range(30, 100))
    for k in range(3):
        assert (df[f"in_step{k}"] == (df[f"label_step{k}"] >= 0)).all()
    # step 1 is the class30to100 old set
    assert np.array_equal(s1, S.class_split(c))


def test_seq_class_prefix_sizes_gldv2():
    a = S.class_permutation(C_GLDV2)
    labels = S.nested_labels(C_GLDV2, [a[:8131], a[:24393], a])
    assert [(row >= 0).sum() for row in labels] == [8131, 24393, C_GLDV2]


def test_sequential_pair_schema():
    df = S.seq_class10to30to100(_source(np.full(20, 3)))
    for step in (0, 1):
        pair = S.sequential_pair(df, step)
        _check_schema(pair, 60)
        assert (pair["label"] == df[f"label_step{step + 1}"]).all()
        assert (pair["old_label"] == df[f"label_step{step}"]).all()
        assert (pair["in_old"] == df[f"in_step{step}"]).all() and (
            pair["in_new"] == df[f"in_step{step + 1}"]
        ).all()
    with pytest.raises(ConfigError):
        S.sequential_pair(df, 2)


def test_build_allocation_unknown_name():
    with pytest.raises(ConfigError, match="class30to100"):
        S.build_allocation("nope", _source([1, 2]))


def test_relabel_old_first():
    assert S.relabel_old_first(6, np.array([4, 1])).tolist() == [2, 0, 3, 4, 1, 5]


def test_source_must_be_sorted_and_contiguous():
    bad = pd.DataFrame({"image_id": ["a", "b", "c"], "label": [0, 2, 2]})
    with pytest.raises(ValueError, match="contiguous"):
        S.class30to100(bad)


def test_allocation_counts():
    df = S.class30to100(_source(np.full(10, 3)))
    counts = S.allocation_counts(df)
    assert counts == {
        "num_images": 30,
        "old_images": 9,
        "new_images": 30,
        "num_old_classes": 3,
        "num_new_classes": 10,
    }
