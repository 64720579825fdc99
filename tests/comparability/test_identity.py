"""Model identities come from tensor content: same weights -> same identity, any change -> another one;
old-model checkpoints are written deterministically (timings in a sidecar)."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch

from bctbench.errors import CheckpointError
from bctbench.identity import module_identity, state_identity
from bctbench.models import EmbeddingModel
from bctbench.old_model import load_old_model, save_old_checkpoint, sidecar_path


def _model(seed: int = 0) -> EmbeddingModel:
    torch.manual_seed(seed)
    return EmbeddingModel("tinycnn_w8", 16, 5)


def test_same_weights_same_identity_and_every_change_shows() -> None:
    a, b = _model(0), _model(0)
    base = module_identity(a)
    assert base == module_identity(b) and len(base) == 64
    state = a.state_dict()
    assert state_identity(dict(reversed(list(state.items())))) == base  # key order does not matter
    bn = next(k for k in state if k.endswith("running_mean"))
    changes = {
        "buffer": {**state, bn: state[bn] + 1e-3},
        "dtype": {**state, bn: state[bn].double()},
        "shape": {**state, bn: state[bn].reshape(1, -1)},
        "key": {("x." + k if k == bn else k): v for k, v in state.items()},
    }
    for what, changed in changes.items():
        assert state_identity(changed) != base, what
    assert module_identity(_model(1)) != base


def test_checkpoint_bytes_do_not_depend_on_file_name_or_timing(tmp_path) -> None:
    model = _model(0)
    meta = {"benchmark": "x", "seed": 0}
    ia = save_old_checkpoint(
        model, tmp_path / "a.pt", backbone="tinycnn_w8", meta=meta, sidecar={"train_seconds": 1.0}
    )
    ib = save_old_checkpoint(
        model, tmp_path / "b" / "c.pt", backbone="tinycnn_w8", meta=meta, sidecar={"train_seconds": 9.0}
    )
    assert ia == ib == module_identity(model)
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b" / "c.pt").read_bytes()
    assert json.loads(sidecar_path(tmp_path / "a.pt").read_text())["train_seconds"] == 1.0
    old = load_old_model(tmp_path / "b" / "c.pt", ia)
    assert old.identity == ia == old.current_identity()
    assert not [p for p in tmp_path.rglob("*.tmp")]  # no temporary files left


def test_files_get_normal_permissions(tmp_path) -> None:
    umask = os.umask(0o022)
    try:
        save_old_checkpoint(_model(), tmp_path / "m.pt", backbone="tinycnn_w8", meta={}, sidecar={})
    finally:
        os.umask(umask)
    for p in (tmp_path / "m.pt", sidecar_path(tmp_path / "m.pt")):
        assert stat.S_IMODE(p.stat().st_mode) == 0o644


def test_loading_checks_identity_and_spec(tmp_path) -> None:
    ident = save_old_checkpoint(_model(), tmp_path / "m.pt", backbone="tinycnn_w8", meta={})
    with pytest.raises(CheckpointError, match="another old model"):
        load_old_model(tmp_path / "m.pt", "0" * 64)
    with pytest.raises(CheckpointError, match="'num_classes' is 5, the benchmark expects 7"):
        load_old_model(tmp_path / "m.pt", ident, expect_num_classes=7)
    with pytest.raises(CheckpointError, match="'embed_dim' is 16"):
        load_old_model(tmp_path / "m.pt", expect_embed_dim=32)


def test_earlier_format_loads_with_its_content_identity(tmp_path) -> None:
    model = _model(3)
    payload = {
        "format": "bctbench-old-model/1",
        "backbone": "tinycnn_w8",
        "embed_dim": 16,
        "num_classes": 5,
        "state_dict": model.state_dict(),
        "meta": {"train_seconds": 12.5},
    }
    torch.save(payload, tmp_path / "v1.pt")
    assert load_old_model(tmp_path / "v1.pt").identity == module_identity(model)


def test_only_temporary_files_of_dead_writers_are_removed(tmp_path) -> None:
    import subprocess
    import sys

    from bctbench.identity import atomic_write_bytes

    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        target = tmp_path / "r.json"
        mine = tmp_path / f".r.json.{live.pid}-abcd.tmp"  # another process writing r.json right now
        killed = tmp_path / f".r.json.{dead.pid}-efgh.tmp"  # a writer that was killed mid-write
        mine.write_text("{")
        killed.write_text("{")
        atomic_write_bytes(target, b"{}\n")
        assert target.read_bytes() == b"{}\n" and mine.exists() and not killed.exists()
    finally:
        live.kill()
        live.wait()
