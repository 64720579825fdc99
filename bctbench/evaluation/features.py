"""Feature extraction with a content-keyed cache.

``extract_features(encoder, paths, boxes, transform) -> float32[N, D]`` (rows follow ``paths``; unit-norm if
the encoder normalises). The cache key is (encoder identity, eval set, part, variant, transform, image list),
so the old model's gallery features are computed once per benchmark and shared by every method. Under DDP the
images are sharded across ranks and the features gathered, so every rank returns the full array.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from bctbench.data import ImageListDataset, ImageLoader
from bctbench.errors import EvaluationError


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
    """``.npy`` files under ``root``, written atomically. ``get`` returns None on a miss."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / f"{key}.npy"

    def get(self, key: str) -> np.ndarray | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            return np.load(path)
        except (OSError, ValueError):
            return None  # a damaged cache entry is recomputed

    def put(self, key: str, features: np.ndarray) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, suffix=".npy.tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.save(fh, features)
            os.replace(tmp, self.path(key))
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


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
    progress: bool = False,
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
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    chunks: list[np.ndarray] = []
    iterator = loader
    if progress and rank == 0:
        from rich.progress import track

        iterator = track(loader, description=desc, total=len(loader), transient=True)
    try:
        for batch in iterator:
            images = batch["images"].to(device, non_blocking=True)
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
