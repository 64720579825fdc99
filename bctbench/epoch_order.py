"""Training order and augmentation as functions of (seed, epoch, index), so a resumed run sees exactly the
batches an uninterrupted one would.

* :class:`EpochShuffleSampler` yields, in epoch ``e``, a permutation of ``range(n)`` drawn from
  ``(seed, e)`` alone, encoded as keys ``e * n + i``. Lightning calls :meth:`~EpochShuffleSampler.set_epoch`
  before every epoch (including the first one after a resume); without it the sampler counts epochs itself.
* :class:`EpochSeededDataset` decodes a key into ``(epoch, i)`` and runs item ``i`` of the wrapped dataset
  with torch's random state seeded from ``(seed, epoch, i)`` (restored afterwards), so random augmentation
  depends on nothing else: not on data-loader workers, their start order, or anything drawn before. With
  ``crop_scale`` it instead draws the item's random-resized-crop box and flip from ``(seed, epoch, i)``
  (``crop_box``, ``flip``), which :func:`bctbench.data.augment_batch` applies to the whole batch at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

__all__ = ["EpochSeededDataset", "EpochShuffleSampler", "sample_seed"]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for item ``index`` in ``epoch`` of a run seeded with ``seed``."""
    return int(
        np.random.SeedSequence([int(seed), int(epoch), int(index)])
        .generate_state(2, np.uint32)
        .view(np.uint64)[0]
        >> 1
    )


class EpochShuffleSampler(Sampler[int]):
    """Shuffled keys ``epoch * n + i`` over ``n`` items; the order is a function of ``(seed, epoch)``."""

    def __init__(self, n: int, seed: int) -> None:
        self.n = int(n)
        self.seed = int(seed)
        self._epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self._epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        epoch = self._epoch
        self._epoch += 1  # counts epochs when nobody calls set_epoch (e.g. wrapped by a distributed sampler)
        g = torch.Generator().manual_seed(
            int(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0])
        )
        order = torch.randperm(self.n, generator=g)
        return iter((order + epoch * self.n).tolist())


class EpochSeededDataset(Dataset):
    """Wraps a map-style dataset of ``n`` items for :class:`EpochShuffleSampler` keys (see module docstring).

    Attributes of the wrapped dataset stay reachable (``wrapper.paths`` is ``dataset.paths``); a wrapped
    :class:`~bctbench.data.ImageListDataset` hands load errors back to the main process as usual.
    """

    def __init__(self, dataset: Dataset, seed: int, crop_scale: tuple[float, float] | None = None) -> None:
        self.dataset = dataset
        self.seed = int(seed)
        self.crop_scale = crop_scale
        self.n = len(dataset)  # type: ignore[arg-type]
        if hasattr(dataset, "defer_errors"):
            dataset.defer_errors = True

    def __len__(self) -> int:
        return self.n

    def __getattr__(self, name: str) -> Any:
        if name in ("dataset", "seed", "n", "crop_scale"):  # not set yet (unpickling in a worker)
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, key: int) -> Any:
        epoch, i = divmod(int(key), self.n)
        if self.crop_scale is not None:  # tensor augmentation: draw the crop box and flip, apply them batched
            item = self.dataset[i]
            if isinstance(item, dict):
                from bctbench.data import rrc_box

                rng = np.random.default_rng(sample_seed(self.seed, epoch, i))
                h, w = item["images"].shape[-2:]
                item["crop_box"] = torch.tensor(
                    rrc_box(rng, int(h), int(w), self.crop_scale), dtype=torch.float32
                )
                item["flip"] = torch.tensor(bool(rng.random() < 0.5))
            return item
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, epoch, i))
            return self.dataset[i]
