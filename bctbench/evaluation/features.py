"""Feature extraction with a content-keyed cache.

``extract_features(encoder, paths, boxes, transform) -> float32[N, D]`` (rows follow ``paths``; unit-norm if
the encoder normalises). The cache key is (encoder identity, eval set, part, variant, transform, image list),
so the old model's gallery features are computed once per benchmark and shared by every method. Under DDP the
images are sharded across ranks and the features gathered, so every rank returns the full array.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
import torch.distributed as dist

from bctbench.data import ImageListDataset, ImageLoader
from bctbench.errors import EvaluationError
from bctbench.progress import track

log = logging.getLogger(__name__)


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def feature_key(
    identity: str,
    eval_set: str,
    part: str,
    variant: str,
    transform: object,
    paths: Sequence[str | Path],
    boxes: Sequence[object] | None,
) -> str:
    """Stable 24-hex key of one feature array."""
    h = hashlib.sha256()
    h.update(json.dumps([identity, eval_set, part, variant, repr(transform)]).encode())
    for p in paths:
        h.update(str(p).encode())
        h.update(b"\0")
    h.update(repr(list(boxes) if boxes is not None else None).encode())
    return h.hexdigest()[:24]


class FeatureCache:
    """Feature arrays under ``root``: ``<key>.npy`` plus a ``<key>.json`` integrity record (``shape``,
    ``dtype``, ``sha256`` of the array's C-order bytes; no paths). Both files are written atomically with
    normal permissions.

    ``get`` returns None on a miss. An entry that cannot be read, lacks its record, or does not match it (a
    truncated, damaged, replaced or reordered array) or the caller's expected ``rows``/``dim`` is logged as a
    warning naming the file, deleted and reported as a miss, so the caller recomputes it. Loading never
    unpickles (``allow_pickle=False``).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / f"{key}.npy"

    def meta_path(self, key: str) -> Path:
        return self.root / f"{key}.json"

    @staticmethod
    def _digest(array: np.ndarray) -> str:
        return hashlib.sha256(np.ascontiguousarray(array).reshape(-1).view(np.uint8).data).hexdigest()

    def _discard(self, key: str, reason: str) -> None:
        log.warning("feature cache: discarding %s (%s); recomputing", self.path(key), reason)
        for p in (self.path(key), self.meta_path(key)):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    def get(self, key: str, rows: int | None = None, dim: int | None = None) -> np.ndarray | None:
        """The cached ``[rows, dim]`` array of ``key``, or None (missing, or invalid and now deleted).

        ``rows``/``dim``: the shape the caller expects (None: not checked).
        """
        path, meta_path = self.path(key), self.meta_path(key)
        if not path.is_file():
            if meta_path.is_file():  # a record without its array (interrupted write)
                with contextlib.suppress(FileNotFoundError):
                    meta_path.unlink()
            return None
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            shape, dtype, digest = tuple(meta["shape"]), str(meta["dtype"]), str(meta["sha256"])
        except FileNotFoundError:
            self._discard(key, f"no integrity record {meta_path.name}")
            return None
        except Exception as err:  # unreadable/invalid JSON, missing or malformed fields
            self._discard(key, f"unreadable integrity record {meta_path.name}: {type(err).__name__}")
            return None
        try:
            array = np.load(path, allow_pickle=False)
        except Exception as err:  # truncated, garbage, pickled object arrays, I/O errors, ...
            self._discard(key, f"unreadable: {type(err).__name__}: {' '.join(str(err).split())[:200]}")
            return None
        if not isinstance(array, np.ndarray):
            self._discard(key, "not a single array")
            return None
        if array.shape != shape or array.dtype.str != dtype:
            self._discard(
                key, f"array is {array.dtype.str}{list(array.shape)}, its record says {dtype}{list(shape)}"
            )
            return None
        if self._digest(array) != digest:
            self._discard(key, "sha256 of the array does not match its record (damaged or modified)")
            return None
        if (rows is not None and (array.ndim < 1 or array.shape[0] != rows)) or (
            dim is not None and (array.ndim != 2 or array.shape[1] != dim)
        ):
            want = f"[{'*' if rows is None else rows}, {'*' if dim is None else dim}]"
            self._discard(key, f"shape {list(array.shape)}, expected {want}")
            return None
        return array

    def put(self, key: str, features: np.ndarray) -> None:
        """Store ``features`` (``[N, D]``) under ``key``: the array first, then its integrity record."""
        features = np.ascontiguousarray(features)
        meta = {"shape": list(features.shape), "dtype": features.dtype.str, "sha256": self._digest(features)}
        self.root.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.path(key), lambda fh: np.save(fh, features, allow_pickle=False))
        blob = (json.dumps(meta, sort_keys=True) + "\n").encode()
        _atomic_write(self.meta_path(key), lambda fh: fh.write(blob))


def _atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """:func:`bctbench.identity.atomic_write` (atomic, normal permissions, stale temporary files removed)."""
    from bctbench.identity import atomic_write

    atomic_write(path, write)


@torch.no_grad()
def extract_features(
    encoder: torch.nn.Module,
    paths: Sequence[str | Path],
    boxes: Sequence[object] | None,
    transform,
    *,
    batch_size: int = 128,
    num_workers: int = 0,
    device: str | torch.device | None = "cpu",
    bf16: bool = False,
    desc: str = "features",
) -> np.ndarray:
    """Embed images with ``encoder`` (eval mode, no grad): returns ``float32[len(paths), D]``.

    ``boxes[i]`` crops image i before the transform (revisited queries). ``device=None`` runs the encoder
    where its parameters already are (no move). Raises :class:`EvaluationError` if the
    encoder returns the wrong shape or non-finite values.
    """
    n = len(paths)
    if n == 0:
        raise EvaluationError(f"{desc}: no images to embed")
    rank, world = _dist_info()
    shard = range(rank, n, world)
    dataset = ImageListDataset(
        [paths[i] for i in shard],
        boxes=[boxes[i] for i in shard] if boxes is not None else None,
        transform=transform,
    )
    loader = ImageLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    if device is None:  # keep the encoder where it is (e.g. a model in the middle of training)
        device = next(iter(encoder.parameters()), torch.empty(0)).device
    else:
        device = torch.device(device)
        encoder.to(device)
    was_training = encoder.training
    encoder.eval()
    # channels-last convolutions: faster on CPU (oneDNN) and GPU; the same layout for every pass keeps
    # features of a model identical whether it was just trained or loaded from a checkpoint
    encoder.to(memory_format=torch.channels_last)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    chunks: list[np.ndarray] = []
    iterator = track(loader, f"features {desc}", total=len(loader), unit="batches") if rank == 0 else loader
    try:
        for batch in iterator:
            images = (
                batch["images"].to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            )
            with autocast:
                out = encoder(images)
            if out.ndim != 2 or out.shape[0] != images.shape[0]:
                raise EvaluationError(
                    f"{desc}: encoder returned shape {tuple(out.shape)} for a batch of {images.shape[0]} images "
                    "(expected [B, D])"
                )
            chunks.append(out.float().cpu().numpy())
    finally:
        encoder.train(was_training)
    local = np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)
    if world > 1:
        gathered: list[np.ndarray | None] = [None] * world
        dist.all_gather_object(gathered, local)
        dim = next(g.shape[1] for g in gathered if g is not None and g.size)
        feats = np.empty((n, dim), np.float32)
        for r, g in enumerate(gathered):
            feats[r::world] = g
    else:
        feats = local
    if not np.isfinite(feats).all():
        bad = int((~np.isfinite(feats)).any(axis=1).sum())
        raise EvaluationError(f"{desc}: encoder produced NaN/inf features for {bad} of {n} images")
    return feats.astype(np.float32, copy=False)
