"""Bad data inputs: revisited ground-truth pickles that try to run code or are malformed, 16-bit images, and
damaged feature / artefact caches.

* ``gnd_*.pkl``: a refused or malformed pickle stops the CLI with one ``error:`` line naming the file
  (exit 2), runs no payload and leaves the results untouched; NumPy-array ground truth in any pickle
  protocol is read.
* 16-bit greyscale images decode to a graded 8-bit RGB image (not PIL's clipped white).
* A damaged feature-cache or artefact file is a cache miss: warned about, deleted, recomputed, and the metrics
  are those of a fresh computation; no pickle in it is ever loaded.
"""

from __future__ import annotations

import _codecs
import builtins
import io
import json
import logging
import os
import pickle
import struct
import subprocess
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bctbench.artifacts import KINDS, ArtifactStore, TrainingImages
from bctbench.data import ImageListDataset, build_test_transform, load_rgb
from bctbench.datamodules.revisited import GndUnpickler, read_gnd
from bctbench.evaluation.features import FeatureCache, extract_features
from bctbench.results import read_result

from .conftest import World, assert_clean_error, run_cli, snapshot

# torch warns about the protocol of a plain pickle before refusing it
pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")

RUN_INDEPENDENT = ("run", "-b", "smoke", "-m", "independent", "--no-wandb", "--quiet")
REEVALUATE = (
    "reevaluate",
    "-b",
    "smoke",
    "--methods",
    "independent",
    "--seeds",
    "0",
    "--no-wandb",
    "--quiet",
)


def _metrics(results: Path, method: str = "independent") -> list[dict]:
    return read_result(results / "smoke" / method / "seed0.json").metrics


def _gnd_file(world: World) -> Path:
    (found,) = world.data.rglob("gnd_rsynth.pkl")
    return found


def _read_good_gnd(path: Path) -> dict:
    with open(path, "rb") as fh:
        return GndUnpickler(fh).load()


class Reduce:
    """Pickles as the call ``fn(*args)``: what a plain ``pickle.load`` would run."""

    def __init__(self, fn: Callable, *args: object) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


class GndLookalike:
    """A class of an importable module: a plain unpickler would import it and run ``__setstate__``."""

    def __init__(self, target: Path) -> None:
        self.target = str(target)

    def __setstate__(self, state: dict) -> None:
        Path(state["target"]).touch()


def _touch(target: Path) -> Reduce:
    return Reduce(os.system, f"touch {target}")


class _PersistentPickler(pickle.Pickler):
    def persistent_id(self, obj):  # every list becomes a persistent reference
        return "ref" if isinstance(obj, list) else None


def _persistent(good: dict) -> bytes:
    buf = io.BytesIO()
    _PersistentPickler(buf, protocol=2).dump(good)
    return buf.getvalue()


def _nested(good: dict, target: Path) -> bytes:
    bad = dict(good)
    bad["gnd"] = [dict(g) for g in good["gnd"]]
    bad["gnd"][0]["junk"] = _touch(target)
    return pickle.dumps(bad)


def _qualified(fn: Callable) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


# id -> (bytes of the gnd file from (good gnd dict, good bytes, payload target), needle of the error line)
GND_CASES: dict[str, tuple[Callable[[dict, bytes, Path], bytes], str]] = {
    "os_system": (lambda g, b, t: pickle.dumps(_touch(t)), f"refused to unpickle {_qualified(os.system)}"),
    "os_system_protocol0": (
        lambda g, b, t: pickle.dumps(_touch(t), protocol=0),
        f"refused to unpickle {_qualified(os.system)}",
    ),
    "builtins_eval": (
        lambda g, b, t: pickle.dumps(Reduce(eval, f"open({str(t)!r}, 'w').close()")),
        "refused to unpickle builtins.eval",
    ),
    "builtins_open": (
        lambda g, b, t: pickle.dumps(Reduce(builtins.open, str(t), "w")),
        f"refused to unpickle {_qualified(builtins.open)}",
    ),
    "subprocess_call": (
        lambda g, b, t: pickle.dumps(Reduce(subprocess.call, ["touch", str(t)])),
        "refused to unpickle subprocess.call",
    ),
    "numpy_save": (  # a NumPy callable outside the array-reconstruction allowlist
        lambda g, b, t: pickle.dumps(Reduce(np.save, str(t), np.zeros(1))),
        f"refused to unpickle {_qualified(np.save)}",
    ),
    "codecs_non_latin1": (
        lambda g, b, t: pickle.dumps(Reduce(_codecs.encode, "abc", "rot13")),
        "refused to unpickle _codecs.encode",
    ),
    "custom_module_class": (
        lambda g, b, t: pickle.dumps(GndLookalike(t)),
        f"refused to unpickle {GndLookalike.__module__}.GndLookalike",
    ),
    "payload_inside_gnd_entry": (
        lambda g, b, t: _nested(g, t),
        f"refused to unpickle {_qualified(os.system)}",
    ),
    "persistent_id": (lambda g, b, t: _persistent(g), "cannot unpickle (UnpicklingError"),
    "truncated": (lambda g, b, t: b[: len(b) // 2], "cannot unpickle"),
    "empty_file": (lambda g, b, t: b"", "cannot unpickle (EOFError"),
    "garbage_bytes": (lambda g, b, t: bytes(range(7, 250, 3)) * 4, "cannot unpickle"),
    "top_level_list": (
        lambda g, b, t: pickle.dumps([g]),
        "expected a dict with keys imlist, qimlist, gnd, got list",
    ),
    "top_level_ndarray": (lambda g, b, t: pickle.dumps(np.zeros(3)), "expected a dict with keys"),
}


@pytest.mark.parametrize("case", list(GND_CASES), ids=list(GND_CASES))
def test_bad_gnd_pickle_is_refused_cleanly(world: World, tmp_path: Path, case: str) -> None:
    make, needle = GND_CASES[case]
    gnd = _gnd_file(world)
    target = tmp_path / "pwned"
    gnd.write_bytes(make(_read_good_gnd(gnd), gnd.read_bytes(), target))
    before = snapshot(world.results)
    res = run_cli(*RUN_INDEPENDENT, *world.args())
    assert_clean_error(res, str(gnd), needle)
    assert not target.exists() and not target.with_suffix(".npy").exists(), "the payload ran"
    assert snapshot(world.results) == before


def _as_numpy_gnd(good: dict) -> dict:
    """The good ground truth with NumPy arrays/scalars where revisitop files have them."""
    return {
        "imlist": good["imlist"],
        "qimlist": [np.str_(q) for q in good["qimlist"]],
        "gnd": [
            {
                "bbx": np.asarray(g["bbx"], dtype=np.float64),
                "easy": np.asarray(g["easy"], dtype=np.int64),
                "hard": np.asarray(g["hard"], dtype=np.int32),
                "junk": [np.int64(j) for j in g["junk"]],
            }
            for g in good["gnd"]
        ],
    }


@pytest.mark.parametrize("protocol", [0, 2, 4, 5], ids=lambda p: f"numpy_gnd_protocol{p}")
def test_numpy_gnd_in_any_protocol_gives_the_same_metrics(world: World, protocol: int) -> None:
    gnd = _gnd_file(world)
    good = _metrics(world.results)
    gnd.write_bytes(pickle.dumps(_as_numpy_gnd(_read_good_gnd(gnd)), protocol=protocol))
    res = run_cli(*REEVALUATE, *world.args())
    assert res.code == 0, res.err[-2000:]
    assert _metrics(world.results) == good


def test_gnd_pickled_by_numpy1_is_read(tmp_path: Path, world: World) -> None:
    """NumPy 1.x pickles name ``numpy.core.multiarray``; NumPy 2.x ``numpy._core.multiarray``: both are read."""
    good = _read_good_gnd(_gnd_file(world))
    blob = pickle.dumps(_as_numpy_gnd(good), protocol=2)
    assert b"numpy._core.multiarray" in blob
    path = tmp_path / "gnd_numpy1.pkl"
    path.write_bytes(blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    imlist, qimlist, gnd = read_gnd(path)
    assert (imlist, qimlist, gnd) == read_gnd(_gnd_file(world))


# ------------------------------------------------------------------------------------------- 16-bit images
GRADIENT = np.arange(4 * 256, dtype=np.int64).reshape(4, 256) * 64  # 0 .. 65472, row-major increasing


def _png_rgb48(grey: np.ndarray) -> bytes:
    """A 48-bit RGB PNG (colour type 2, bit depth 16): ``grey`` (``int[H, W]``) in every channel."""
    h, w = grey.shape
    rgb = np.repeat(grey[..., None], 3, axis=2).astype(">u2")
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def _write_wide(path: Path, kind: str) -> np.ndarray:
    """Write ``GRADIENT`` as image ``kind``; return the 8-bit values expected after decoding
    (``uint8[H, W]``)."""
    if kind == "png_I16":
        Image.fromarray(GRADIENT.astype(np.uint16)).save(path, format="PNG")
    elif kind == "tiff_I16B":
        Image.frombytes("I;16B", GRADIENT.shape[::-1], GRADIENT.astype(">u2").tobytes()).save(
            path, format="TIFF"
        )
    elif kind == "tiff_I32_16bit_range":
        Image.fromarray(GRADIENT.astype(np.int32)).save(path, format="TIFF")
    elif kind == "tiff_I32_wide_range":  # beyond 16 bits: stretched from its own [min, max]
        wide = GRADIENT * 256
        Image.fromarray(wide.astype(np.int32)).save(path, format="TIFF")
        return (wide * 255 // wide.max()).astype(np.uint8)
    elif kind == "png_RGB48":
        path.write_bytes(_png_rgb48(GRADIENT))
    return (GRADIENT >> 8).astype(np.uint8)


@pytest.mark.parametrize(
    "kind", ["png_I16", "tiff_I16B", "tiff_I32_16bit_range", "tiff_I32_wide_range", "png_RGB48"]
)
def test_16bit_image_decodes_to_graded_rgb(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"{kind}.img"
    expected = _write_wide(path, kind)
    rgb = load_rgb(path)
    arr = np.asarray(rgb)
    assert rgb.mode == "RGB" and arr.dtype == np.uint8 and arr.shape == (*GRADIENT.shape, 3)
    assert (arr == arr[..., :1]).all(), "grey input must give equal channels"
    flat = arr[..., 0].reshape(-1).astype(np.int64)
    assert flat.min() == 0 and flat.max() > 200 and len(np.unique(flat)) > 200, "not graded (clipped?)"
    assert (np.diff(flat) >= 0).all(), "not monotone with the input"
    np.testing.assert_array_equal(arr[..., 0], expected)
    # the dataset (training and evaluation path) sees the same image, cropped too
    item = ImageListDataset([path], boxes=[(0, 0, 128, 2)])[0]["images"]
    assert item.shape == (3, 2, 128) and float(item.max()) > float(item.min())


# ------------------------------------------------------------------------------------------- feature cache
def _json_of(npy: Path) -> Path:
    return npy.with_suffix(".json")


def _save_npy(path: Path, array: np.ndarray, allow_pickle: bool = False) -> None:
    with open(path, "wb") as fh:
        np.save(fh, array, allow_pickle=allow_pickle)


# id -> damage(npy file, its good array, payload target); the record (.json) is left as written unless noted
FEATURE_CASES: dict[str, Callable[[Path, np.ndarray, Path], None]] = {
    "wrong_dimension": lambda p, a, t: _save_npy(p, a[:, :-1].copy()),
    "extra_rows": lambda p, a, t: _save_npy(p, np.concatenate([a, a[:1]])),
    "permuted_rows": lambda p, a, t: _save_npy(p, a[::-1].copy()),
    "one_value_changed": lambda p, a, t: _save_npy(
        p, np.where(np.arange(a.size).reshape(a.shape) == 3, 0.5, a)
    ),
    "wrong_dtype": lambda p, a, t: _save_npy(p, a.astype(np.float64)),
    "truncated_file": lambda p, a, t: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "garbage_bytes": lambda p, a, t: p.write_bytes(b"\x93NUMPY garbage" + bytes(range(256))),
    "pickled_object_array": lambda p, a, t: _save_npy(p, np.array([_touch(t)], dtype=object), True),
    "missing_record": lambda p, a, t: _json_of(p).unlink(),
    "garbage_record": lambda p, a, t: _json_of(p).write_text("{not json"),
    "record_says_other_shape": lambda p, a, t: _json_of(p).write_text(
        json.dumps({**json.loads(_json_of(p).read_text()), "shape": [1, 1]})
    ),
}


# CLI groups: the group's damages are dealt round-robin to the cached files of one evaluation
FEATURE_GROUPS = {
    "shape_and_order": ["wrong_dimension", "extra_rows", "permuted_rows", "one_value_changed"],
    "unreadable": ["truncated_file", "garbage_bytes", "pickled_object_array", "wrong_dtype"],
    "record": ["missing_record", "garbage_record", "record_says_other_shape"],
}


@pytest.mark.parametrize("group", list(FEATURE_GROUPS), ids=list(FEATURE_GROUPS))
def test_damaged_feature_cache_is_recomputed(world: World, tmp_path: Path, caplog, group: str) -> None:
    good = _metrics(world.results)
    # the cache key holds the image paths, so this copy of the world fills its own entries first
    known = set((world.cache / "features").rglob("*.npy"))
    res = run_cli(*REEVALUATE, *world.args())
    assert res.code == 0, res.err[-2000:]
    files = sorted(set((world.cache / "features").rglob("*.npy")) - known)
    assert files, "the evaluation wrote no feature cache"
    arrays = {p: np.load(p, allow_pickle=False) for p in files}
    target = tmp_path / "pwned"
    cases = FEATURE_GROUPS[group]
    for i, p in enumerate(files):
        FEATURE_CASES[cases[i % len(cases)]](p, arrays[p], target)
    with caplog.at_level(logging.WARNING, logger="bctbench.evaluation.features"):
        res = run_cli(*REEVALUATE, *world.args())
    assert res.code == 0, res.err[-2000:]
    assert _metrics(world.results) == good
    assert not target.exists(), "the payload ran"
    for p in files:
        assert str(p) in caplog.text, f"no warning names {p}"
        # recomputed and stored again, identical to the first extraction, with a matching record
        again = FeatureCache(p.parent).get(p.stem, rows=arrays[p].shape[0], dim=arrays[p].shape[1])
        assert again is not None
        np.testing.assert_array_equal(again, arrays[p])


class _TinyEncoder(torch.nn.Module):
    """``float[B, 3, H, W] -> float[B, 4]`` (deterministic)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(self.conv(x).mean(dim=(2, 3)), dim=1)


@pytest.fixture
def image_paths(tmp_path: Path) -> list[str]:
    paths = []
    for i in range(6):
        p = tmp_path / "img" / f"{i}.png"
        p.parent.mkdir(exist_ok=True)
        Image.new("RGB", (20, 20), (40 * i, 10 + 5 * i, 200 - 30 * i)).save(p)
        paths.append(str(p))
    return paths


@pytest.mark.parametrize("case", list(FEATURE_CASES), ids=list(FEATURE_CASES))
def test_feature_cache_get_rejects_damage(tmp_path: Path, image_paths: list[str], caplog, case: str) -> None:
    transform = build_test_transform(16)
    fresh = extract_features(_TinyEncoder(), image_paths, None, transform, batch_size=4)  # float32[6, 4]
    cache = FeatureCache(tmp_path / "feats")
    cache.put("k", fresh)
    target = tmp_path / "pwned"
    FEATURE_CASES[case](cache.path("k"), fresh, target)
    with caplog.at_level(logging.WARNING, logger="bctbench.evaluation.features"):
        assert cache.get("k") is None
    assert str(cache.path("k")) in caplog.text
    assert not cache.path("k").exists() and not cache.meta_path("k").exists()
    assert not target.exists()
    cache.put("k", extract_features(_TinyEncoder(), image_paths, None, transform, batch_size=4))
    np.testing.assert_array_equal(cache.get("k", rows=6, dim=4), fresh)


def test_feature_cache_record_and_expected_shape(tmp_path: Path, caplog) -> None:
    cache = FeatureCache(tmp_path / "feats")
    feats = np.arange(12, dtype=np.float32).reshape(3, 4)
    cache.put("k", feats)
    umask = os.umask(0)
    os.umask(umask)
    for p in (cache.path("k"), cache.meta_path("k")):
        assert p.stat().st_mode & 0o777 == 0o666 & ~umask
    record = json.loads(cache.meta_path("k").read_text())
    assert record["shape"] == [3, 4] and record["dtype"] == "<f4" and len(record["sha256"]) == 64
    assert str(tmp_path) not in cache.meta_path("k").read_text()
    assert not list(cache.root.glob("*.tmp"))
    np.testing.assert_array_equal(cache.get("k", rows=3, dim=4), feats)
    with caplog.at_level(logging.WARNING, logger="bctbench.evaluation.features"):
        assert cache.get("k", rows=5) is None  # the caller expects another image count
    assert "expected [5, *]" in caplog.text and not cache.path("k").exists()
    cache.put("k", feats)
    assert cache.get("k", dim=8) is None


# ------------------------------------------------------------------------------------------- artefacts
@pytest.fixture
def store_factory(tmp_path: Path, image_paths: list[str]) -> Callable[[Path], ArtifactStore]:
    from bctbench.models import EmbeddingModel
    from bctbench.old_model import load_old_model, save_old_checkpoint

    ckpt = tmp_path / "old.pt"
    torch.manual_seed(0)
    save_old_checkpoint(EmbeddingModel("tinycnn_w8", 16, 3), ckpt, backbone="tinycnn_w8", meta={})
    old = load_old_model(ckpt)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    images = TrainingImages(image_paths, labels, labels.clone(), 3)

    def make(root: Path) -> ArtifactStore:
        return ArtifactStore(root, old, "s" * 64, lambda: images, lambda: images, build_test_transform(16))

    return make


def _pad_embeddings(value: dict) -> dict:
    return {
        k: torch.cat([v, v[:, :1]], dim=1) if k in ("weight", "features", "means", "centers") else v
        for k, v in value.items()
    }


def _save_to(path: Path, obj: object) -> None:
    torch.save(obj, path)


# id -> damage(.pt file, its good value, payload target)
ARTIFACT_CASES: dict[str, Callable[[Path, dict, Path], None]] = {
    "garbage_bytes": lambda p, v, t: p.write_bytes(bytes(range(256)) * 3),
    "empty_file": lambda p, v, t: p.write_bytes(b""),
    "truncated_zip": lambda p, v, t: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "plain_pickle_payload": lambda p, v, t: p.write_bytes(pickle.dumps(_touch(t))),
    "payload_inside_torch_zip": lambda p, v, t: _save_to(p, {**v, "extra": _touch(t)}),
    "wrong_keys": lambda p, v, t: _save_to(p, {"foo": torch.zeros(3)}),
    "missing_key": lambda p, v, t: _save_to(p, dict(list(v.items())[1:])),
    "not_a_dict": lambda p, v, t: _save_to(p, torch.zeros(3)),
    "values_not_tensors": lambda p, v, t: _save_to(p, {k: 1.0 for k in v}),
    "wrong_embedding_width": lambda p, v, t: _save_to(p, _pad_embeddings(v)),
}


@pytest.mark.parametrize("case", list(ARTIFACT_CASES), ids=list(ARTIFACT_CASES))
def test_damaged_artefact_is_recomputed(tmp_path: Path, store_factory, caplog, case: str) -> None:
    fresh = {kind: store_factory(tmp_path / "fresh").get(kind) for kind in KINDS}
    root = tmp_path / "art"
    first = store_factory(root)
    for kind in KINDS:
        first.get(kind)
    files = {kind: root / f"{kind}-{first.key(kind)}.pt" for kind in KINDS}
    target = tmp_path / "pwned"
    for kind, path in files.items():
        ARTIFACT_CASES[case](path, fresh[kind], target)
    store = store_factory(root)
    with caplog.at_level(logging.WARNING, logger="bctbench.artifacts"):
        got = {kind: store.get(kind) for kind in KINDS}
    assert not target.exists(), "the payload ran"
    for kind, path in files.items():
        assert str(path) in caplog.text, f"no warning names {path}"
        assert got[kind].keys() == fresh[kind].keys()
        for key, value in fresh[kind].items():
            assert torch.equal(got[kind][key], value), (kind, key)
        # rewritten: deterministic bytes, usual permissions, readable without code
        assert path.read_bytes() == (tmp_path / "fresh" / path.name).read_bytes()
        torch.load(path, weights_only=True)


def test_valid_artefacts_are_reused_with_usual_permissions(tmp_path: Path, store_factory, caplog) -> None:
    first = store_factory(tmp_path / "art")
    computed = {kind: first.get(kind) for kind in KINDS}
    umask = os.umask(0)
    os.umask(umask)
    files = sorted((tmp_path / "art").iterdir())
    assert len(files) == len(KINDS), files  # no temporary files left
    assert all(p.stat().st_mode & 0o777 == 0o666 & ~umask for p in files)
    with caplog.at_level(logging.WARNING, logger="bctbench.artifacts"):
        again = {kind: store_factory(tmp_path / "art").get(kind) for kind in KINDS}
    assert "discarding" not in caplog.text  # every kind's computed keys are the expected ones
    for kind in KINDS:
        assert all(torch.equal(again[kind][k], v) for k, v in computed[kind].items())


def test_damaged_artefacts_in_a_cli_run_are_recomputed(world: World, tmp_path: Path, caplog) -> None:
    """End to end: ``bct`` reads old-model artefacts; garbage and a pickle payload in them are recomputed."""
    run_bct = ("run", "-b", "smoke", "-m", "bct", "--no-wandb", "--quiet", *world.args())
    res = run_cli(*run_bct)
    assert res.code == 0, res.err[-2000:]
    good = _metrics(world.results, "bct")
    files = sorted((world.cache / "artifacts").rglob("*.pt"))
    assert len(files) >= 2
    target = tmp_path / "pwned"
    files[0].write_bytes(b"\x00garbage" * 50)
    for p in files[1:]:
        p.write_bytes(pickle.dumps(_touch(target)))
    keep = {p: p.read_bytes() for p in files}
    with caplog.at_level(logging.WARNING, logger="bctbench.artifacts"):
        res = run_cli(*run_bct)
    assert res.code == 0, res.err[-2000:]
    assert not target.exists(), "the payload ran"
    for p in files:
        assert str(p) in caplog.text, f"no warning names {p}"
    assert _metrics(world.results, "bct") == good
    assert all(p.read_bytes() != keep[p] for p in files)
