"""Model identities from content: a digest of the tensors, never of file bytes or metadata.

``state_identity(state_dict)`` hashes, for every entry in sorted key order, the key, the dtype, the shape and
the raw little-endian bytes of the tensor. Two models with the same weights (parameters and buffers) get the
same identity whatever file, machine or time they came from; any change to a weight, a buffer (e.g. BatchNorm
running statistics), a dtype or a key changes it. Identities are 64 hex characters; :func:`short` gives the
12-character form shown in tables and logs.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import BinaryIO

import torch
from torch import nn

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "module_identity",
    "remove_stale_temps",
    "save_deterministic",
    "short",
    "state_identity",
    "temp_prefix",
]


def state_identity(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 hex of a state dict's content: per key (sorted) the key, dtype, shape and tensor bytes."""
    h = hashlib.sha256()
    for key in sorted(state):
        value = state[key]
        if not isinstance(value, torch.Tensor):
            value = torch.as_tensor(value)
        t = value.detach().cpu().contiguous()
        h.update(key.encode())
        h.update(b"\0" + str(t.dtype).encode() + b"\0" + repr(tuple(t.shape)).encode() + b"\0")
        # bytes through a uint8 view: works for every dtype, bfloat16 included
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def module_identity(module: nn.Module) -> str:
    """:func:`state_identity` of ``module.state_dict()`` (parameters and buffers)."""
    return state_identity(module.state_dict())


def short(identity: str | None, n: int = 12) -> str:
    """The first ``n`` characters of an identity (``"–"`` for None)."""
    return identity[:n] if identity else "–"


def temp_prefix(path: Path) -> str:
    """Prefix of this process's temporary files for ``path``: ``.<name>.<pid>-`` (the pid tells a live writer
    from a killed one)."""
    return f".{path.name}.{os.getpid()}-"


def remove_stale_temps(path: Path) -> None:
    """Remove temporary files of ``path`` left by writers that no longer run (killed mid-write); files of a
    live writer — another process writing the same target right now — are left alone."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        pid = stale.name[len(path.name) + 2 :].split("-", 1)[0]
        if pid.isdigit() and _alive(int(pid)):
            continue
        stale.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # an earlier, failed write of this very process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Write ``path`` through ``write(file)`` atomically (temporary file in the same folder, fsync, rename).

    The file gets the usual permissions (``0666`` minus the umask), not ``mkstemp``'s ``0600``. Temporary files
    of the same target left by a killed writer are removed first; on any error the temporary file is removed,
    the previous target is untouched, and an ``OSError`` names the target.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path), suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except OSError as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None  # name the target
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """:func:`atomic_write` of ``data``; returns the path."""
    return atomic_write(path, lambda fh: fh.write(data))


def save_deterministic(obj: object, path: str | os.PathLike) -> Path:
    """``torch.save`` ``obj`` into memory, then write the bytes atomically.

    Saving through a buffer keeps the file name out of the archive, so the same object gives the same bytes.
    """
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())
