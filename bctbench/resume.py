"""Exact resume: every method checkpoint carries the run's provenance and random state.

A run killed at any point and resumed with ``--resume`` must give the metrics of an uninterrupted run of the
same seed. Lightning restores weights, optimiser, schedulers and loop counters; :class:`ResumeState` adds

* the global random states (Python, NumPy, torch CPU and CUDA) at the moment of the checkpoint, restored
  before the next epoch starts (the data order and augmentation are functions of seed, epoch and index, see
  :class:`bctbench.data.EpochShuffleSampler`, so they need no state), and
* the run's provenance — old-model identity, spec, dataset and split digests, hyperparameter digest, method and
  seed — which :func:`check_resume` compares with the run before anything is restored: a checkpoint of another
  old model, spec, data or hyperparameters is refused with a one-line error.

The frozen old model is never restored from a method checkpoint
(:meth:`bctbench.method.CompatibilityMethod.load_state_dict` keeps the weights it was built with), and the
checkpoint does not store it.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from bctbench.errors import CheckpointError
from bctbench.identity import short

KEY = "bctbench"
PROVENANCE_FIELDS = (
    "method",
    "seed",
    "old_identity",
    "benchmark_sha256",
    "dataset_sha256",
    "split_sha256",
    "hparams_digest",
)

__all__ = ["KEY", "ResumeState", "capture_rng", "check_resume", "latest_checkpoint", "restore_rng"]


def capture_rng() -> dict[str, Any]:
    """The global random states as tensors and plain values (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002 - the global state is the point
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss_next],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos)},
        "numpy_gauss": [int(has_gauss), float(gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Set the global random states from :func:`capture_rng`'s output."""
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    np_state = state["numpy"]
    has_gauss, gauss = state["numpy_gauss"]
    keys = np_state["keys"].numpy().astype(np.uint32)
    np.random.set_state((np_state["kind"], keys, np_state["pos"], has_gauss, gauss))  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class ResumeState(Callback):
    """Writes the run's provenance and the random states into every checkpoint, strips the frozen old model's
    weights from it, and restores the random states when Lightning resumes from one."""

    def __init__(self, provenance: dict[str, Any]) -> None:
        self.provenance = dict(provenance)
        self.restored = False

    @property
    def state_key(self) -> str:
        return "bctbench.ResumeState"

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        checkpoint[KEY] = {**self.provenance, "rng": capture_rng()}
        state = checkpoint.get("state_dict", {})
        for key in [k for k in state if k.startswith("old.")]:
            del state[key]  # the old model is pinned elsewhere; never restored from here

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get(KEY) or {}
        if "rng" in saved:
            restore_rng(saved["rng"])
            self.restored = True


def _read(path: Path) -> dict[str, Any] | None:
    """A checkpoint read with ``weights_only=True``, or None when it cannot be read (e.g. cut by a kill)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - unreadable or refused: not a usable checkpoint
        return None
    return checkpoint if isinstance(checkpoint, dict) else None


def check_resume(path: str | Path, provenance: dict[str, Any]) -> dict[str, Any]:
    """Read a method checkpoint safely (``weights_only=True``) and refuse it unless its provenance is the run's.

    Returns the checkpoint's provenance. Raises :class:`CheckpointError` naming the file and the first field
    that differs (or an unreadable file / a checkpoint without provenance).
    """
    path = Path(path)
    checkpoint = _read(path)
    if checkpoint is None:
        raise CheckpointError(f"{path}: not a readable checkpoint")
    saved = checkpoint.get(KEY)
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path}: no bctbench provenance in this checkpoint; cannot resume from it")
    for field in PROVENANCE_FIELDS:
        theirs, ours = saved.get(field), provenance.get(field)
        if theirs != ours:
            show = lambda v: short(v) if isinstance(v, str) and len(v) > 16 else repr(v)  # noqa: E731
            raise CheckpointError(
                f"{path}: {field} {show(theirs)} differs from this run's {show(ours)}; cannot resume (run without "
                "--resume to start afresh)"
            )
    return {k: saved.get(k) for k in PROVENANCE_FIELDS}


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The newest readable checkpoint of a run folder: ``checkpoints/last.ckpt``, else the latest
    ``epochNNN.ckpt`` (a kill while Lightning was writing ``last.ckpt`` leaves it cut short)."""
    ckpt_dir = Path(folder) / "checkpoints"
    candidates = [ckpt_dir / "last.ckpt", *sorted(ckpt_dir.glob("epoch*.ckpt"), reverse=True)]
    for path in candidates:
        if path.is_file() and _read(path) is not None:
            return path
    return None
