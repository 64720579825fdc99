"""The embedded synthetic landmark dataset: determinism, on-disk formats, manifest, class-size buckets, and no
colour shortcut (a colour-histogram nearest-neighbour baseline stays near chance).

The retrieval metrics here are small brute-force re-implementations (``docs/evaluation.md`` §3.3 and §4.2),
kept independent of ``bctbench.evaluation`` on purpose; ``test_learnable.py`` reuses them.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import pickle
import re
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bctbench.datamodules.gldv2 import load_gldv2_eval_set
from bctbench.datamodules.revisited import load_revisited_eval_set
from bctbench.datamodules.synthetic import (
    GENERATOR_VERSION,
    SyntheticConfig,
    _landmark,
    _make_plan,
    _query_box,
    _tree_sha256,
    ensure_synthetic,
    gldv2_root,
    make_synthetic,
    revisited_root,
    val_gldv2_root,
    val_revisited_root,
    verify_synthetic,
)
from bctbench.errors import DataError

HEX16 = re.compile(r"^[0-9a-f]{16}$")


# ------------------------------------------------------------------------------------------ reference metrics
def revisited_ap(ranking: np.ndarray, ok: set[int], junk: set[int]) -> float:
    """Trapezoidal AP of ``docs/evaluation.md`` §3.3: delete junk from the ranking, then trapezoid over
    positives."""
    cleaned = [j for j in ranking.tolist() if j not in junk]
    pos = [r for r, j in enumerate(cleaned) if j in ok]
    ap = 0.0
    for k, r in enumerate(pos):
        p0 = 1.0 if r == 0 else k / r
        p1 = (k + 1) / (r + 1)
        ap += (p0 + p1) / 2
    return ap / len(ok)


def revisited_map(sim: np.ndarray, gnd: list[dict], protocol: str = "medium") -> float:
    """Mean revisited AP over queries with a non-empty positive set; ``sim`` is ``[n_queries, n_db]``."""
    aps = []
    for i, g in enumerate(gnd):
        easy, hard, junk = set(g["easy"]), set(g["hard"]), set(g["junk"])
        ok, ignore = {
            "easy": (easy, junk | hard),
            "medium": (easy | hard, junk),
            "hard": (hard, junk | easy),
        }[protocol]
        if ok:
            aps.append(revisited_ap(np.argsort(-sim[i], kind="stable"), ok, ignore))
    return float(np.mean(aps))


def gldv2_map100(sim: np.ndarray, solutions: list[set[int]]) -> float:
    """GLDv2 mAP@100 (``docs/evaluation.md`` §4.2) with rankings from ``sim`` ``[n_queries, n_gallery]``."""
    aps = []
    for i, sol in enumerate(solutions):
        top = np.argsort(-sim[i], kind="stable")[:100]
        hits, ap = 0, 0.0
        for r, j in enumerate(top.tolist()):
            if j in sol:
                hits += 1
                ap += hits / (r + 1)
        aps.append(ap / min(len(sol), 100))
    return float(np.mean(aps))


def random_revisited_map(gnd: list[dict], n_db: int, trials: int = 20, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    return float(np.mean([revisited_map(rng.random((len(gnd), n_db)), gnd) for _ in range(trials)]))


# ------------------------------------------------------------------------------------------ loading helpers
def read_rsynth(path: Path) -> tuple[dict, Path]:
    rdir = revisited_root(path)
    with open(rdir / "gnd_rsynth.pkl", "rb") as f:
        return pickle.load(f), rdir / "jpg"


def load_image(path: Path, box=None, size: int = 64) -> np.ndarray:
    with Image.open(path) as im:
        im = im.convert("RGB")
        if box is not None:
            im = im.crop(tuple(box))
        return np.asarray(im.resize((size, size), Image.BILINEAR))


def rsynth_arrays(path: Path, size: int = 64) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Queries cropped to ``bbx`` and database images, both resized to ``size`` (uint8 ``[N, H, W, 3]``)."""
    gnd, jpg = read_rsynth(path)
    q = np.stack(
        [
            load_image(jpg / f"{n}.jpg", g["bbx"], size)
            for n, g in zip(gnd["qimlist"], gnd["gnd"], strict=True)
        ]
    )
    db = np.stack([load_image(jpg / f"{n}.jpg", None, size) for n in gnd["imlist"]])
    return q, db, gnd["gnd"]


def gl_path(root: Path, split: str, iid: str) -> Path:
    return root / split / iid[0] / iid[1] / iid[2] / f"{iid}.jpg"


def gldv2_eval_arrays(path: Path, size: int = 64) -> tuple[np.ndarray, np.ndarray, list[set[int]]]:
    """Scored test queries (Public and Private, ``images != None``), index images and solution row sets."""
    root = gldv2_root(path)
    index_ids = [r["id"] for r in read_csv(root / "index.csv")]
    row = {iid: i for i, iid in enumerate(index_ids)}
    scored = [
        r for r in read_csv(root / "retrieval_solution_v2.1.csv") if r["Usage"] in ("Public", "Private")
    ]
    scored = [r for r in scored if r["images"] != "None"]
    q = np.stack([load_image(gl_path(root, "test", r["id"]), None, size) for r in scored])
    g = np.stack([load_image(gl_path(root, "index", iid), None, size) for iid in index_ids])
    return q, g, [{row[i] for i in r["images"].split()} for r in scored]


def colour_histograms(images: np.ndarray, bins: int = 8) -> np.ndarray:
    """Hellinger-normalised joint RGB histograms (``bins``³), one row per image."""
    q = images.astype(np.int64) * bins // 256
    idx = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
    h = np.stack([np.bincount(i.ravel(), minlength=bins**3) for i in idx]).astype(np.float64)
    h = np.sqrt(h / h.sum(1, keepdims=True))
    return h / np.linalg.norm(h, axis=1, keepdims=True)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_synthetic(
        tmp_path_factory.mktemp("synth"), name="synth_tiny", config=SyntheticConfig.tiny(), workers=1
    )


# ------------------------------------------------------------------------------------------ reference metric
def test_reference_ap_matches_golden_example():
    # docs/evaluation.md §3.4: ranking [4, 7, 1, 6, 2, 0, 3, 5], ok {4, 1, 0}, junk {7, 6} -> 0.902777...
    ap = revisited_ap(np.array([4, 7, 1, 6, 2, 0, 3, 5]), {4, 1, 0}, {7, 6})
    assert ap == pytest.approx((1 + 1 + (2 / 3 + 3 / 4) / 2) / 3, abs=1e-12)
    # docs/evaluation.md §4.2 formula on a duplicate-free ranking [0, 1, 3, 4, 2]: hits at ranks 2 and 4
    # of 3 ids
    sim = np.array([[0.9, 0.8, 0.1, 0.7, 0.6]])  # ranking [0, 1, 3, 4, 2]
    assert gldv2_map100(sim, [{1, 4, 9}]) == pytest.approx((1 / 2 + 2 / 4) / 3)


# ------------------------------------------------------------------------------------------ determinism
def test_same_seed_is_byte_identical_across_worker_counts(tiny, tmp_path):
    other = make_synthetic(tmp_path, name="synth_tiny", config=SyntheticConfig.tiny(), workers=2)
    a = json.loads((tiny / "manifest.json").read_text())
    b = json.loads((other / "manifest.json").read_text())
    assert a["files"] == b["files"]
    assert (tiny / "manifest.json").read_bytes() == (other / "manifest.json").read_bytes()
    for rel in list(a["files"])[:: max(1, len(a["files"]) // 25)]:
        assert (tiny / rel).read_bytes() == (other / rel).read_bytes(), rel
    files_on_disk = sorted(str(p.relative_to(other)) for p in other.rglob("*") if p.is_file())
    assert files_on_disk == sorted([*a["files"], "manifest.json"])


def test_different_seed_differs(tiny, tmp_path):
    other = make_synthetic(tmp_path, name="synth_tiny", seed=1, config=SyntheticConfig.tiny(), workers=1)
    a = json.loads((tiny / "manifest.json").read_text())
    b = json.loads((other / "manifest.json").read_text())
    assert a["tree_sha256"] != b["tree_sha256"]
    shared = set(a["files"]) & set(b["files"])  # fixed names (CSVs, pkl, rsynth jpgs) must change content
    assert shared and all(a["files"][k] != b["files"][k] for k in shared)
    assert b["seed"] == 1 and a["seed"] == 0


# ------------------------------------------------------------------------------------------ formats
def test_gldv2_format(tiny):
    root = gldv2_root(tiny)
    with open(root / "train_clean.csv", newline="") as f:
        assert next(csv.reader(f)) == ["landmark_id", "images"]
    train = read_csv(root / "train_clean.csv")
    lids = [int(r["landmark_id"]) for r in train]
    assert len(set(lids)) == len(lids) == SyntheticConfig.tiny().train_classes
    train_ids = [iid for r in train for iid in r["images"].split(" ")]
    assert all(HEX16.match(i) for i in train_ids)
    for iid in train_ids:
        assert gl_path(root, "train", iid).is_file(), iid

    assert (root / "index.csv").read_text().splitlines()[0] == "id"
    assert (root / "test.csv").read_text().splitlines()[0] == "id"
    index_ids = [r["id"] for r in read_csv(root / "index.csv")]
    test_ids = [r["id"] for r in read_csv(root / "test.csv")]
    for split, ids in (("index", index_ids), ("test", test_ids)):
        assert all(HEX16.match(i) for i in ids)
        assert all(gl_path(root, split, i).is_file() for i in ids)
    all_ids = train_ids + index_ids + test_ids
    assert len(set(all_ids)) == len(all_ids), "image ids must be unique across splits"

    assert (root / "retrieval_solution_v2.1.csv").read_text().splitlines()[0] == "id,images,Usage"
    sol = read_csv(root / "retrieval_solution_v2.1.csv")
    assert [r["id"] for r in sol] == test_ids
    index_set = set(index_ids)
    usages = {(r["images"] == "None", r["Usage"]) for r in sol}
    assert {r["Usage"] for r in sol} <= {"Public", "Private", "Ignored"}
    assert (False, "Public") in usages and (False, "Private") in usages  # scored queries of both splits
    assert (True, "Ignored") in usages  # ignored rows as in the real file
    assert (True, "Public") in usages or (True, "Private") in usages  # "None" with a split tag
    assert (False, "Ignored") not in usages
    for r in sol:
        if r["images"] != "None":
            ids = r["images"].split(" ")
            assert ids and set(ids) <= index_set and len(set(ids)) == len(ids)


def test_revisited_format(tiny):
    gnd, jpg = read_rsynth(tiny)
    assert set(gnd) == {"imlist", "qimlist", "gnd"}
    imlist, qimlist = gnd["imlist"], gnd["qimlist"]
    cfg = SyntheticConfig.tiny()
    assert len(qimlist) == len(gnd["gnd"]) == cfg.rev_landmarks * cfg.rev_queries_per_landmark
    assert not set(imlist) & set(qimlist), "queries must not be in the database"
    assert len(set(imlist)) == len(imlist)
    for n in imlist + qimlist:
        assert (jpg / f"{n}.jpg").is_file(), n
        assert not n.endswith(".jpg")
    n_db = len(imlist)
    for qi, g in enumerate(gnd["gnd"]):
        assert set(g) >= {"bbx", "easy", "hard", "junk"}
        e, h, j = (g[k] for k in ("easy", "hard", "junk"))
        for lst in (e, h, j):
            assert all(isinstance(i, int) and 0 <= i < n_db for i in lst)
            assert lst == sorted(set(lst))
        assert not (set(e) & set(h) or set(e) & set(j) or set(h) & set(j)), f"gnd[{qi}] lists overlap"
        assert e or h, f"gnd[{qi}] has no positives"
        x1, y1, x2, y2 = g["bbx"]
        with Image.open(jpg / f"{qimlist[qi]}.jpg") as im:
            w, hgt = im.size
            assert im.mode == "RGB" and (w, hgt) == (cfg.image_size, cfg.image_size)
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= hgt, g["bbx"]
        assert (x2 - x1) >= 8 and (y2 - y1) >= 8
    # distractors: database images that are no query's positive or junk
    used = {i for g in gnd["gnd"] for k in ("easy", "hard", "junk") for i in g[k]}
    assert len(used) < n_db


def test_query_box_adds_context_and_stays_in_the_image():
    cfg = SyntheticConfig(image_size=72, query_box_context=0.25)
    # 20 x 40 box in the middle: widened by 5 / 10 px on each side
    assert _query_box([26.0, 16.0, 46.0, 56.0], cfg) == [21.0, 6.0, 51.0, 66.0]
    # near the border: clipped to the image
    assert _query_box([2.0, 30.0, 70.0, 71.0], cfg) == [0.0, 19.8, 72.0, 72.0]
    assert _query_box(None, cfg) == [0.0, 0.0, 72.0, 72.0]
    assert _query_box([10.0, 10.0, 20.0, 20.0], SyntheticConfig(query_box_context=0.0)) == [
        10.0,
        10.0,
        20.0,
        20.0,
    ]


def test_class_size_buckets(tiny):
    train = read_csv(gldv2_root(tiny) / "train_clean.csv")
    sizes = [len(r["images"].split()) for r in train]
    assert 1 in sizes and 2 in sizes and 3 in sizes and max(sizes) >= 4
    m = json.loads((tiny / "manifest.json").read_text())
    assert m["counts"]["train_classes_n1"] == sizes.count(1)
    assert m["counts"]["train_images"] == sum(sizes)
    assert m["version"] == GENERATOR_VERSION and m["config"] == asdict(SyntheticConfig.tiny())


def test_default_config_sizes_from_plan():
    cfg = SyntheticConfig()
    plan = _make_plan(0, cfg)  # the plan only; no image is drawn
    sizes = [len(ids) for _, ids in plan.train_rows]
    assert len(sizes) == cfg.train_classes == 240  # chosen on validation (docs/tuning.md §4)
    assert 5000 <= sum(sizes) <= 7000
    assert {1, 2, 3} <= set(sizes) and sum(s >= 4 for s in sizes) >= 200
    assert max(sizes) >= 3 * cfg.train_median  # long tail
    assert len(plan.rev_queries) == 70 and 1000 <= len(plan.rev_db) <= 1500
    assert 1000 <= len(plan.index_ids) <= 2000
    assert sum(1 for r in plan.test_rows if r[1] != "None") == 200
    # validation sets: rsynth_val has rsynth's sizes, gldv2synth_val those of the GLDv2-format test split
    assert len(plan.val_rev.queries) == 70 and len(plan.val_rev.db) == len(plan.rev_db)
    assert 1000 <= len(plan.val_gl.index_ids) <= 2000
    assert [r[2] for r in plan.val_gl.test_rows if r[1] != "None"] == ["Public"] * 200
    assert len(plan.val_gl.test_rows) == len(plan.test_rows)


# ------------------------------------------------------------------------------------------ validation sets
VAL_PREFIXES = ("datasets/rsynth_val/", "gldv2_val/")
VAL_ROLES = (
    "rsynth_val",
    "rsynth_val_distractor",
    "gldv2synth_val",
    "gldv2synth_val_distractor",
    "gldv2synth_val_unscored",
)
#: tree sha256 of the tiny dataset (seed 0) written by generator 1.2, before the validation sets existed
TINY_TREE_SHA256_GENERATOR_1_2 = "c41ea23407a3466d6e3a626ef908e2642ea0bb7ac1e1a2471cabd3b489e51ec5"


def _manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def test_validation_sets_leave_every_other_file_byte_identical(tiny, tmp_path):
    no_val = dataclasses.replace(SyntheticConfig.tiny(), val_rev_landmarks=0, val_gl_landmarks=0)
    bare = make_synthetic(tmp_path, name="synth_tiny", config=no_val, workers=1)
    with_val, without = _manifest(tiny)["files"], _manifest(bare)["files"]
    assert without and not [rel for rel in without if rel.startswith(VAL_PREFIXES)]  # size 0: not written
    assert {rel for rel in with_val if not rel.startswith(VAL_PREFIXES)} == set(without)
    assert {rel: with_val[rel] for rel in without} == without
    # every file of the training and test sets, byte for byte: CSVs, the gnd pickle and every image
    for rel in without:
        assert (tiny / rel).read_bytes() == (bare / rel).read_bytes(), rel
    # ... and the same bytes as before the validation sets were added (generator 1.2)
    assert _tree_sha256(without) == TINY_TREE_SHA256_GENERATOR_1_2


def test_validation_sets_formats_and_sizes(tiny):
    cfg = SyntheticConfig.tiny()
    counts = _manifest(tiny)["counts"]
    # rsynth_val: the revisited format of rsynth, read by the same loader
    rev = load_revisited_eval_set(tiny, "rsynth_val")
    n_db = (
        cfg.val_rev_landmarks * cfg.val_rev_db_per_landmark
        + cfg.val_rev_distractor_landmarks * cfg.val_rev_views_per_distractor
        + cfg.val_rev_clutter
    )
    assert len(rev.query_paths) == cfg.val_rev_landmarks * cfg.val_rev_queries_per_landmark == 12
    assert len(rev.gallery_paths) == n_db == counts["rsynth_val_db"]
    assert all(p.parent == val_revisited_root(tiny) / "jpg" for p in rev.query_paths + rev.gallery_paths)
    assert all(p.stem.startswith("rsynth_val_") for p in rev.query_paths + rev.gallery_paths)
    assert all(g["easy"] or g["hard"] for g in rev.gnd)
    for key in ("easy", "hard", "junk"):  # the visibility rules of rsynth give every label
        assert counts[f"rsynth_val_{key}"] == sum(len(g[key]) for g in rev.gnd) > 0
    # gldv2synth_val: the GLDv2 eval format, every scored query Public
    root = val_gldv2_root(tiny)
    for name in ("index.csv", "test.csv"):
        assert (root / name).read_text().splitlines()[0] == "id"
    assert (root / "retrieval_solution_v2.1.csv").read_text().splitlines()[0] == "id,images,Usage"
    sol = read_csv(root / "retrieval_solution_v2.1.csv")
    assert [r["id"] for r in sol] == [r["id"] for r in read_csv(root / "test.csv")]
    assert {r["Usage"] for r in sol if r["images"] != "None"} == {"Public"}
    assert {r["Usage"] for r in sol} <= {"Public", "Ignored"}  # no private row at all
    gl = load_gldv2_eval_set(root, name="gldv2synth_val")
    assert len(gl.query_paths) == cfg.val_gl_landmarks * cfg.val_gl_queries_per_landmark == 16
    assert set(gl.usage) == {"public"} and gl.protocols == ("public",)
    assert len(gl.gallery_paths) == counts["gldv2_val_index"]
    assert len(sol) == counts["gldv2_val_test"] == len(gl.query_paths) + cfg.val_gl_unscored_test


def test_validation_landmarks_are_disjoint_from_training_and_test(tiny):
    cfg = SyntheticConfig.tiny()
    plan = _make_plan(0, cfg)
    roles = plan.landmarks
    val = {lm for role in VAL_ROLES for lm in roles[role]}
    other = {lm for role, lms in roles.items() if role not in VAL_ROLES for lm in lms}
    assert val and other and not val & other
    assert min(val) > max(other)  # numbered after every training and test landmark and distractor

    # read back from the files: which landmark each image on disk shows (the plan's jobs name every file) ...
    files = _manifest(tiny)["files"]
    shown = {job.relpath: job.landmark for job in plan.jobs}
    assert set(shown) <= set(files)
    in_val = {lm for rel, lm in shown.items() if rel.startswith(VAL_PREFIXES)} - {-1}
    elsewhere = {lm for rel, lm in shown.items() if not rel.startswith(VAL_PREFIXES)} - {-1}
    assert in_val and not in_val & elsewhere
    # ... the files agree with it: a query's solution in gldv2_val is exactly its landmark's gallery
    root = val_gldv2_root(tiny)
    lm_of_id = {Path(rel).stem: lm for rel, lm in shown.items() if rel.startswith("gldv2_val/")}
    for row in read_csv(root / "retrieval_solution_v2.1.csv"):
        if row["images"] != "None":
            lm = lm_of_id[row["id"]]
            assert lm in val
            assert set(row["images"].split()) == {
                iid for iid in (r["id"] for r in read_csv(root / "index.csv")) if lm_of_id[iid] == lm
            }
    # image identities: no validation image id or name is used by training or test files
    train_ids = {i for r in read_csv(gldv2_root(tiny) / "train_clean.csv") for i in r["images"].split()}
    test_ids = {r["id"] for name in ("index.csv", "test.csv") for r in read_csv(gldv2_root(tiny) / name)}
    val_ids = {r["id"] for name in ("index.csv", "test.csv") for r in read_csv(root / name)}
    assert val_ids and not val_ids & (train_ids | test_ids)
    rsynth, _ = read_rsynth(tiny)
    with open(val_revisited_root(tiny) / "gnd_rsynth_val.pkl", "rb") as f:
        rsynth_val = pickle.load(f)
    assert not set(rsynth_val["imlist"] + rsynth_val["qimlist"]) & set(rsynth["imlist"] + rsynth["qimlist"])
    val_hashes = {h for rel, h in files.items() if rel.startswith(VAL_PREFIXES)}
    assert not val_hashes & {h for rel, h in files.items() if not rel.startswith(VAL_PREFIXES)}
    # new landmark numbers draw new appearances: no validation landmark looks like another landmark
    maps = {lm: _landmark(0, lm).matmap.tobytes() for lm in val | other}
    assert not {maps[lm] for lm in val} & {maps[lm] for lm in other}
    assert len({maps[lm] for lm in val}) == len(val)


# ------------------------------------------------------------------------------------------ manifest
def test_verify_detects_modified_and_missing_files(tiny, tmp_path):
    copy = Path(shutil.copytree(tiny, tmp_path / "copy"))
    verify_synthetic(copy)
    m = json.loads((copy / "manifest.json").read_text())
    victim = next(rel for rel in m["files"] if rel.startswith("gldv2/index/"))
    data = bytearray((copy / victim).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / victim).write_bytes(bytes(data))
    with pytest.raises(DataError, match=re.escape(victim)) as err:
        verify_synthetic(copy)
    assert "\n" not in str(err.value)
    (copy / victim).unlink()
    with pytest.raises(DataError, match="missing file " + re.escape(victim)):
        verify_synthetic(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(DataError, match="manifest.json"):
        verify_synthetic(copy)


def test_ensure_synthetic_reuses_and_regenerates(tiny, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny, root / "synth_tiny")
    manifest = root / "synth_tiny" / "manifest.json"
    before = manifest.stat().st_mtime_ns
    path = ensure_synthetic(root, name="synth_tiny", config=SyntheticConfig.tiny(), verify=True)
    assert path == root / "synth_tiny" and manifest.stat().st_mtime_ns == before  # reused

    m = json.loads(manifest.read_text())
    m["version"] = "0.0-old"
    manifest.write_text(json.dumps(m))
    ensure_synthetic(root, name="synth_tiny", config=SyntheticConfig.tiny(), workers=1)
    assert json.loads(manifest.read_text())["version"] == GENERATOR_VERSION  # regenerated
    assert manifest.read_bytes() == (tiny / "manifest.json").read_bytes()
    assert not [p for p in root.iterdir() if p.name.startswith(".synth_tiny.") and p.is_dir()]


# ------------------------------------------------------------------------------------------ no shortcut
# Thresholds. A colour shortcut would put same-landmark images first: the histogram baseline would then reach
# the level of a learned model (0.2-0.5 medium mAP on the default set). We require it to stay within a few
# points of a random ranking (measured with 20 random rankings on the same ground truth).
TINY_MARGIN = 0.12  # 4 landmarks x 16 views among 100 images: chance is already ~0.2 and noisy
DEFAULT_MARGIN = 0.04  # 35 landmarks among 1380 images: chance ~0.025


def test_no_colour_shortcut_tiny(tiny):
    q, db, gnd = rsynth_arrays(tiny)
    sim = colour_histograms(q) @ colour_histograms(db).T
    hist, chance = revisited_map(sim, gnd), random_revisited_map(gnd, len(db))
    assert hist < chance + TINY_MARGIN, f"colour-histogram mAP {hist:.3f} vs chance {chance:.3f}"


@pytest.fixture(scope="module")
def default_set(request) -> Path:
    # shared with test_learnable.py and reused across runs while the generator version and config match
    root = request.config.cache.mkdir("bctbench_synthetic")
    return ensure_synthetic(root, name="synth", config=SyntheticConfig())


@pytest.mark.slow
def test_no_colour_shortcut_default(default_set):
    verify_synthetic(default_set)
    q, db, gnd = rsynth_arrays(default_set)
    sim = colour_histograms(q) @ colour_histograms(db).T
    hist, chance = revisited_map(sim, gnd), random_revisited_map(gnd, len(db))
    print(f"rsynth medium mAP: colour histogram {hist:.4f}, chance {chance:.4f}")
    assert hist < chance + DEFAULT_MARGIN, f"colour-histogram mAP {hist:.3f} vs chance {chance:.3f}"

    gq, gg, sol = gldv2_eval_arrays(default_set)
    gsim = colour_histograms(gq) @ colour_histograms(gg).T
    gl = gldv2_map100(gsim, sol)
    rng = np.random.default_rng(0)
    gl_chance = float(np.mean([gldv2_map100(rng.random(gsim.shape), sol) for _ in range(5)]))
    print(f"gldv2synth mAP@100: colour histogram {gl:.4f}, chance {gl_chance:.4f}")
    assert gl < gl_chance + DEFAULT_MARGIN, f"colour-histogram mAP@100 {gl:.3f} vs chance {gl_chance:.3f}"
