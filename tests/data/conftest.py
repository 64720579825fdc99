"""Tiny on-disk GLDv2 and revisited trees, built in ``tmp_path`` with a handful of 8x8 JPEGs."""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def hex_id(tag: str) -> str:
    """Deterministic 16-character lowercase hex id."""
    return hashlib.md5(tag.encode()).hexdigest()[:16]


def write_jpeg(path: Path, size: tuple[int, int] = (8, 8), seed: int = 0, mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).convert(mode).save(path, format="JPEG")
    return path


def gldv2_path(root: Path, split: str, image_id: str) -> Path:
    return root / split / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg"


@dataclass
class GLDv2Tree:
    root: Path
    # landmark_id -> list of image ids, in train_clean.csv file order
    classes: dict[int, list[str]] = field(default_factory=dict)
    index_ids: list[str] = field(default_factory=list)
    test_ids: list[str] = field(default_factory=list)
    solution_rows: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def train_clean(self) -> Path:
        return self.root / "train_clean.csv"

    @property
    def num_images(self) -> int:
        return sum(len(v) for v in self.classes.values())

    def write_train_clean(self, text: str | None = None) -> None:
        if text is None:
            text = "landmark_id,images\n" + "".join(
                f"{lm},{' '.join(ids)}\n" for lm, ids in self.classes.items()
            )
        self.train_clean.write_text(text)


# landmark ids in file order (deliberately unsorted) and their class sizes: label = rank of landmark_id
LANDMARKS = [50, 3, 17, 8, 99, 23, 41, 5, 70, 12]
SIZES = [4, 1, 2, 3, 5, 7, 2, 6, 1, 4]


@pytest.fixture
def gldv2_tree(tmp_path: Path) -> GLDv2Tree:
    """10 landmarks / 35 train images, 6 index images, 5 test images, solution with every row kind."""
    tree = GLDv2Tree(root=tmp_path / "gldv2")
    for lm, n in zip(LANDMARKS, SIZES, strict=True):
        tree.classes[lm] = [hex_id(f"train-{lm}-{k}") for k in range(n)]
    for lm, ids in tree.classes.items():
        for k, i in enumerate(ids):
            write_jpeg(gldv2_path(tree.root, "train", i), seed=lm * 100 + k)
    tree.write_train_clean()
    tree.index_ids = [hex_id(f"index-{k}") for k in range(6)]
    tree.test_ids = [hex_id(f"test-{k}") for k in range(5)]
    for k, i in enumerate(tree.index_ids):
        write_jpeg(gldv2_path(tree.root, "index", i), seed=1000 + k)
    for k, i in enumerate(tree.test_ids):
        write_jpeg(gldv2_path(tree.root, "test", i), seed=2000 + k)
    (tree.root / "index.csv").write_text("id\n" + "".join(f"{i}\n" for i in tree.index_ids))
    (tree.root / "test.csv").write_text("id\n" + "".join(f"{i}\n" for i in tree.test_ids))
    g, t = tree.index_ids, tree.test_ids
    # solution in an order different from test.csv; kinds: private, public, None, Ignored, public
    tree.solution_rows = [
        (t[3], f"{g[5]} {g[0]}", "Private"),
        (t[0], f"{g[1]} {g[2]}", "Public"),
        (t[1], "None", "Private"),
        (t[2], "None", "Ignored"),
        (t[4], g[3], "Public"),
    ]
    write_solution(tree)
    return tree


def write_solution(tree: GLDv2Tree, header: str = "id,images,Usage") -> None:
    text = header + "\n" + "".join(f"{a},{b},{c}\n" for a, b, c in tree.solution_rows)
    (tree.root / "retrieval_solution_v2.1.csv").write_text(text)


@pytest.fixture
def make_revisited(tmp_path: Path):
    """Builder: ``make_revisited(layout="revisitop" | "advbct", name=..., gnd=None) -> (root, pkl, jpg)``.

    Default set: 6 database images, 2 queries (queries not in the database)."""

    def build(
        layout: str = "revisitop", name: str = "roxford5k", gnd: dict | None = None, images: bool = True
    ):
        root = tmp_path / f"rev-{layout}"
        if layout == "revisitop":
            pkl = root / "datasets" / name / f"gnd_{name}.pkl"
            jpg = root / "datasets" / name / "jpg"
        else:
            pkl = root / "ROxfordParis" / f"gnd_{name}.pkl"
            jpg = root / "ROxfordParis" / name / "jpg"
        imlist = [f"db_{k:03d}" for k in range(6)]
        qimlist = ["query_a", "query_b"]
        if gnd is None:
            gnd = {
                "imlist": imlist,
                "qimlist": qimlist,
                "gnd": [
                    {"bbx": [1.0, 2.0, 7.5, 8.0], "easy": [0, 2], "hard": [1], "junk": [5]},
                    {"bbx": [0, 0, 5, 5], "easy": [], "hard": [3, 4], "junk": []},
                ],
            }
        pkl.parent.mkdir(parents=True, exist_ok=True)
        jpg.mkdir(parents=True, exist_ok=True)
        with open(pkl, "wb") as f:
            pickle.dump(gnd, f)
        if images:
            for k, n in enumerate(list(gnd.get("imlist", [])) + list(gnd.get("qimlist", []))):
                write_jpeg(jpg / f"{n}.jpg", size=(10, 12), seed=k)
        return root, pkl, jpg

    return build


@pytest.fixture
def helpers():
    """The module's helper functions (tests must not import conftest modules by name)."""
    from types import SimpleNamespace

    return SimpleNamespace(
        hex_id=hex_id, write_jpeg=write_jpeg, gldv2_path=gldv2_path, write_solution=write_solution
    )
