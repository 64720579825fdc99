"""ClassBalancedSampler: m images per class per batch, determinism per (seed, epoch), DDP sharding."""

from __future__ import annotations

import numpy as np
import pytest
from torch.utils.data.distributed import DistributedSampler

from bctbench.data import ClassBalancedSampler

# 12 classes with sizes 1..12 (labels deliberately not contiguous and shuffled)
SIZES = np.arange(1, 13)
LABELS = np.random.default_rng(0).permutation(np.repeat(np.arange(12) * 7 + 3, SIZES))


def _batches(sampler: ClassBalancedSampler) -> np.ndarray:
    return np.asarray(list(sampler), dtype=np.int64).reshape(-1, sampler.batch_size)


def test_every_batch_has_m_images_of_distinct_classes():
    s = ClassBalancedSampler(LABELS, m_per_class=4, batch_size=12, seed=1)
    batches = _batches(s)
    assert len(s) == batches.size == (LABELS.size // 12) * 12
    for b in batches:
        classes, counts = np.unique(LABELS[b], return_counts=True)
        assert classes.size == 3 and (counts == 4).all()
        for c in classes:  # distinct images whenever the class has >= m images
            idx = b[LABELS[b] == c]
            n_c = int((LABELS == c).sum())
            assert np.unique(idx).size == min(4, n_c)


def test_small_classes_are_sampled_with_replacement():
    labels = np.array([0, 1, 1, 2, 2, 2, 3, 3, 3, 3])
    s = ClassBalancedSampler(labels, m_per_class=4, batch_size=8, seed=0)
    for b in _batches(s):
        for c in np.unique(labels[b]):
            assert (labels[b] == c).sum() == 4


def test_deterministic_per_seed_and_epoch():
    a = ClassBalancedSampler(LABELS, 2, 8, seed=5)
    b = ClassBalancedSampler(LABELS, 2, 8, seed=5)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(ClassBalancedSampler(LABELS, 2, 8, seed=6)) != first


def test_ddp_shards_partition_the_global_batches():
    full = ClassBalancedSampler(LABELS, 2, 6, seed=3, num_replicas=2, rank=0)
    global_batches = full.global_batches()
    shards = [ClassBalancedSampler(LABELS, 2, 6, seed=3, num_replicas=2, rank=r) for r in range(2)]
    got = [_batches(s) for s in shards]
    assert len(got[0]) == len(got[1]) == len(shards[0]) // 6
    assert np.array_equal(got[0], global_batches[0::2]) and np.array_equal(got[1], global_batches[1::2])
    assert len(got[0]) * 2 * 6 <= LABELS.size


def test_images_covered_evenly_within_a_class():
    labels = np.repeat(np.arange(4), 8)  # 4 classes x 8 images, 2 classes per batch
    s = ClassBalancedSampler(labels, m_per_class=4, batch_size=8, seed=0)
    counts = np.bincount(np.asarray(list(s)), minlength=labels.size)
    assert counts.min() == counts.max() == 1  # one epoch = one pass, each class walks its permutation


def test_lightning_leaves_it_alone():
    assert isinstance(ClassBalancedSampler(LABELS, 2, 4, seed=0), DistributedSampler)


@pytest.mark.parametrize(
    ("m", "batch", "rank", "replicas"), [(3, 8, 0, 1), (2, 40, 0, 1), (2, 4, 2, 2), (0, 4, 0, 1)]
)
def test_invalid_arguments(m, batch, rank, replicas):
    with pytest.raises(ValueError):
        ClassBalancedSampler(LABELS, m, batch, seed=0, num_replicas=replicas, rank=rank)
