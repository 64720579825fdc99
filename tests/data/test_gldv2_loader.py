"""GLDv2 readers, split files and the retrieval eval set, on a tiny tree; one test per bad-input case."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from bctbench.datamodules import splits as S
from bctbench.datamodules.gldv2 import (
    find_metadata,
    image_relpath,
    load_gldv2_eval_set,
    load_split,
    prepare_split,
    read_index_csv,
    read_retrieval_solution,
    read_test_csv,
    read_train_clean,
)
from bctbench.errors import DataError
from bctbench.evaluation.evalsets import GLDv2EvalSet


def _err(excinfo, *needles: str) -> str:
    assert excinfo.type is DataError
    msg = str(excinfo.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, (needle, msg)
    return msg


# -------------------------------------------------------------------------------------------- train_clean


def test_read_train_clean_derivation(gldv2_tree):
    df = read_train_clean(gldv2_tree.train_clean)
    assert list(df.columns) == ["image_id", "landmark_id", "label"]
    assert len(df) == gldv2_tree.num_images == 35
    sorted_lm = sorted(gldv2_tree.classes)
    # label = rank of landmark id; rows by label, then list order
    expected_ids = [i for lm in sorted_lm for i in gldv2_tree.classes[lm]]
    assert df["image_id"].tolist() == expected_ids
    assert df["landmark_id"].tolist() == [lm for lm in sorted_lm for _ in gldv2_tree.classes[lm]]
    assert df["label"].tolist() == [k for k, lm in enumerate(sorted_lm) for _ in gldv2_tree.classes[lm]]


def test_image_relpath():
    assert image_relpath("train", "0123456789abcdef") == "train/0/1/2/0123456789abcdef.jpg"


def test_train_clean_missing_column(gldv2_tree):
    gldv2_tree.write_train_clean("landmark_id\n1\n")
    with pytest.raises(DataError) as excinfo:
        read_train_clean(gldv2_tree.train_clean)
    _err(excinfo, "train_clean.csv", "line 1", "missing column 'images'")


def test_train_clean_extra_column(gldv2_tree):
    gldv2_tree.write_train_clean("landmark_id,images,url\n1,0123456789abcdef,x\n")
    with pytest.raises(DataError) as excinfo:
        read_train_clean(gldv2_tree.train_clean)
    _err(excinfo, "train_clean.csv", "unexpected column 'url'")


def test_train_clean_malformed_row(gldv2_tree):
    good = gldv2_tree.train_clean.read_text().splitlines()
    good.insert(3, "77,0123456789abcdef,extra")
    gldv2_tree.write_train_clean("\n".join(good) + "\n")
    with pytest.raises(DataError) as excinfo:
        read_train_clean(gldv2_tree.train_clean)
    _err(excinfo, "train_clean.csv", "line 4", "malformed row")


def test_train_clean_bad_landmark_id(gldv2_tree):
    gldv2_tree.write_train_clean("landmark_id,images\n1,0123456789abcdef\nx2,1123456789abcdef\n")
    with pytest.raises(DataError) as excinfo:
        read_train_clean(gldv2_tree.train_clean)
    _err(excinfo, "train_clean.csv", "line 3", "'x2'")


def test_train_clean_bad_image_id(gldv2_tree):
    gldv2_tree.write_train_clean("landmark_id,images\n1,0123456789abcdef 0123456789ABCDEF\n")
    with pytest.raises(DataError) as excinfo:
        read_train_clean(gldv2_tree.train_clean)
    _err(excinfo, "train_clean.csv", "line 2", "0123456789ABCDEF")


def test_train_clean_duplicate_image_id_names_both_lines(gldv2_tree):
    gldv2_tree.write_train_clean(
        "landmark_id,images\n1,0123456789abcdef\n2,aaaaaaaaaaaaaaaa\n3,0123456789abcdef\n"
    )
    with pytest.raises(DataError) as excinfo:
        read_train_clean(gldv2_tree.train_clean)
    _err(excinfo, "train_clean.csv", "line 4", "line 2", "duplicate image id 0123456789abcdef")


def test_train_clean_duplicate_landmark(gldv2_tree):
    gldv2_tree.write_train_clean("landmark_id,images\n1,0123456789abcdef\n1,aaaaaaaaaaaaaaaa\n")
    with pytest.raises(DataError) as excinfo:
        read_train_clean(gldv2_tree.train_clean)
    _err(excinfo, "train_clean.csv", "line 3", "line 2", "duplicate landmark_id 1")


def test_train_clean_empty_images(gldv2_tree):
    gldv2_tree.write_train_clean("landmark_id,images\n1,\n")
    with pytest.raises(DataError) as excinfo:
        read_train_clean(gldv2_tree.train_clean)
    _err(excinfo, "train_clean.csv", "line 2", "empty images")


def test_missing_metadata_file(gldv2_tree):
    gldv2_tree.train_clean.unlink()
    with pytest.raises(DataError) as excinfo:
        find_metadata(gldv2_tree.root, "train_clean.csv")
    _err(excinfo, "train_clean.csv", "not found")


def test_missing_root_folder(tmp_path):
    with pytest.raises(DataError) as excinfo:
        prepare_split(tmp_path / "nowhere", "class30to100")
    _err(excinfo, "nowhere", "not found")


def test_metadata_in_subfolder(gldv2_tree):
    (gldv2_tree.root / "metadata").mkdir()
    gldv2_tree.train_clean.rename(gldv2_tree.root / "metadata" / "train_clean.csv")
    assert find_metadata(gldv2_tree.root, "train_clean.csv").parent.name == "metadata"


# ------------------------------------------------------------------------------------- index / test / solution


def test_read_index_and_test(gldv2_tree):
    assert read_index_csv(gldv2_tree.root / "index.csv").tolist() == gldv2_tree.index_ids
    assert read_test_csv(gldv2_tree.root / "test.csv").tolist() == gldv2_tree.test_ids


def test_index_duplicate_id(gldv2_tree):
    ids = gldv2_tree.index_ids + [gldv2_tree.index_ids[1]]
    (gldv2_tree.root / "index.csv").write_text("id\n" + "".join(f"{i}\n" for i in ids))
    with pytest.raises(DataError) as excinfo:
        read_index_csv(gldv2_tree.root / "index.csv")
    _err(excinfo, "index.csv", "line 8", "line 3", gldv2_tree.index_ids[1])


def test_index_wrong_column(gldv2_tree):
    (gldv2_tree.root / "index.csv").write_text("image\n0123456789abcdef\n")
    with pytest.raises(DataError) as excinfo:
        read_index_csv(gldv2_tree.root / "index.csv")
    _err(excinfo, "index.csv", "missing column 'id'")


def test_read_solution_filters_rows(gldv2_tree):
    sol = read_retrieval_solution(
        gldv2_tree.root / "retrieval_solution_v2.1.csv",
        index_ids=gldv2_tree.index_ids,
        test_ids=gldv2_tree.test_ids,
    )
    t = gldv2_tree.test_ids
    assert sol["id"].tolist() == [t[3], t[0], t[4]]  # None and Ignored rows skipped
    assert sol["usage"].tolist() == ["private", "public", "public"]
    assert sol["gallery_rows"].tolist() == [(5, 0), (1, 2), (3,)]
    assert sol["line"].tolist() == [2, 3, 6]


def test_solution_unknown_usage(gldv2_tree, helpers):
    gldv2_tree.solution_rows[2] = (gldv2_tree.test_ids[1], "None", "Secret")
    helpers.write_solution(gldv2_tree)
    with pytest.raises(DataError) as excinfo:
        read_retrieval_solution(gldv2_tree.root / "retrieval_solution_v2.1.csv")
    _err(excinfo, "retrieval_solution_v2.1.csv", "line 4", "Secret")


def test_solution_id_not_in_index(gldv2_tree, helpers):
    stranger = helpers.hex_id("stranger")
    gldv2_tree.solution_rows[1] = (gldv2_tree.test_ids[0], f"{gldv2_tree.index_ids[0]} {stranger}", "Public")
    helpers.write_solution(gldv2_tree)
    with pytest.raises(DataError) as excinfo:
        read_retrieval_solution(
            gldv2_tree.root / "retrieval_solution_v2.1.csv", index_ids=gldv2_tree.index_ids
        )
    _err(excinfo, "retrieval_solution_v2.1.csv", "line 3", stranger, "index.csv")


def test_solution_missing_column(gldv2_tree, helpers):
    helpers.write_solution(gldv2_tree, header="id,images")
    with pytest.raises(DataError) as excinfo:
        read_retrieval_solution(gldv2_tree.root / "retrieval_solution_v2.1.csv")
    _err(excinfo, "retrieval_solution_v2.1.csv", "missing column 'Usage'")


def test_solution_malformed_row(gldv2_tree):
    path = gldv2_tree.root / "retrieval_solution_v2.1.csv"
    path.write_text(path.read_text() + "0123456789abcdef,None\n")
    with pytest.raises(DataError) as excinfo:
        read_retrieval_solution(path)
    _err(excinfo, "retrieval_solution_v2.1.csv", "line 7", "malformed row")


# --------------------------------------------------------------------------------------------------- eval set


def test_load_gldv2_eval_set(gldv2_tree):
    es = load_gldv2_eval_set(gldv2_tree.root)
    assert isinstance(es, GLDv2EvalSet) and es.name == "gldv2"
    t, g = gldv2_tree.test_ids, gldv2_tree.index_ids
    # queries in test.csv order
    assert [p.stem for p in es.query_paths] == [t[0], t[3], t[4]]
    assert es.usage == ("public", "private", "public")
    assert es.solution == ((1, 2), (5, 0), (3,))
    assert [p.stem for p in es.gallery_paths] == g
    assert all(p.is_file() for p in es.query_paths + es.gallery_paths)
    assert es.query_paths[0].relative_to(gldv2_tree.root).as_posix() == image_relpath("test", t[0])


def test_usage_selects_one_split_and_drops_the_other_rows(gldv2_tree, monkeypatch):
    t = gldv2_tree.test_ids
    path = gldv2_tree.root / "retrieval_solution_v2.1.csv"
    sol = read_retrieval_solution(path, index_ids=gldv2_tree.index_ids, usage="public")
    assert sol["id"].tolist() == [t[0], t[4]] and set(sol["usage"]) == {"public"}
    assert sol["gallery_rows"].tolist() == [(1, 2), (3,)]
    # the private rows are dropped while the file is parsed: never handed on
    import bctbench.datamodules.gldv2 as gl

    kept: list[list[list[str]]] = []
    original = gl._read_csv_rows

    def spy(*args, **kwargs):
        rows, lines = original(*args, **kwargs)
        kept.append(rows)
        return rows, lines

    monkeypatch.setattr(gl, "_read_csv_rows", spy)
    read_retrieval_solution(path, usage="public")
    assert kept and all(r[2].lower() != "private" for r in kept[-1]) and t[3] not in {r[0] for r in kept[-1]}

    es = load_gldv2_eval_set(gldv2_tree.root, name="gldv2_public", usage="public")
    assert es.usage == ("public", "public") and es.protocols == ("public",)
    assert [p.stem for p in es.query_paths] == [t[0], t[4]]
    assert es.primary_protocol == "public"
    private = load_gldv2_eval_set(gldv2_tree.root, usage="private")
    assert [p.stem for p in private.query_paths] == [t[3]] and private.usage == ("private",)


def test_usage_still_checks_every_row_and_refuses_unknown_values(gldv2_tree, helpers):
    path = gldv2_tree.root / "retrieval_solution_v2.1.csv"
    with pytest.raises(DataError) as excinfo:
        read_retrieval_solution(path, usage="validation")
    _err(excinfo, "retrieval_solution_v2.1.csv", "usage must be one of private, public", "'validation'")
    gldv2_tree.solution_rows[2] = (gldv2_tree.test_ids[1], "None", "Secret")
    helpers.write_solution(gldv2_tree)
    with pytest.raises(DataError) as excinfo:
        read_retrieval_solution(path, usage="public")
    _err(excinfo, "retrieval_solution_v2.1.csv", "line 4", "Secret")


def test_usage_without_rows_is_one_line(gldv2_tree, helpers):
    gldv2_tree.solution_rows = [r for r in gldv2_tree.solution_rows if r[2] != "Private"]
    helpers.write_solution(gldv2_tree)
    with pytest.raises(DataError) as excinfo:
        load_gldv2_eval_set(gldv2_tree.root, usage="private")
    _err(excinfo, "retrieval_solution_v2.1.csv", "no scored (Private) query rows")


def test_eval_set_missing_gallery_image(gldv2_tree, helpers):
    for k in (2, 4):
        helpers.gldv2_path(gldv2_tree.root, "index", gldv2_tree.index_ids[k]).unlink()
    with pytest.raises(DataError) as excinfo:
        load_gldv2_eval_set(gldv2_tree.root)
    _err(excinfo, "2 of 6", "index.csv", gldv2_tree.index_ids[2], gldv2_tree.index_ids[4])


def test_eval_set_missing_test_csv(gldv2_tree):
    (gldv2_tree.root / "test.csv").unlink()
    with pytest.raises(DataError) as excinfo:
        load_gldv2_eval_set(gldv2_tree.root)
    _err(excinfo, "test.csv", "not found")


# ------------------------------------------------------------------------------------------------ split files


def test_prepare_and_load_split_round_trip(gldv2_tree):
    csv_path = prepare_split(gldv2_tree.root, "class30to100")
    splits_dir = gldv2_tree.root / "splits"
    assert csv_path == splits_dir / "class30to100.csv"
    clean = pd.read_csv(splits_dir / "gldv2_clean.csv", dtype={"image_id": str})
    assert list(clean.columns) == ["image_id", "landmark_id", "label", "path"]
    assert clean["path"][0] == image_relpath("train", clean["image_id"][0])
    lock = json.loads((splits_dir / "class30to100.lock.json").read_text())
    assert lock["ratio"] == 0.3 and lock["seeds"] == {"class_seed": 666, "data_base_seed": 666}
    assert lock["num_classes"] == 10 and lock["num_images"] == 35
    assert lock["counts"]["num_old_classes"] == 3 and lock["counts"]["num_new_classes"] == 10
    assert len(lock["csv_sha256"]) == 64 and len(lock["source_sha256"]) == 64
    first = csv_path.read_bytes()
    prepare_split(gldv2_tree.root, "class30to100")
    assert csv_path.read_bytes() == first  # deterministic
    df = load_split(gldv2_tree.root, "class30to100")
    expected = S.class30to100(read_train_clean(gldv2_tree.train_clean)[["image_id", "label"]])
    pd.testing.assert_frame_equal(df[list(S.SPLIT_COLUMNS)], expected, check_dtype=False)
    assert df["label"].dtype == np.int64 and df["in_old"].dtype == bool
    assert all(p.endswith(f"{i}.jpg") for p, i in zip(df["path"], df["image_id"], strict=True))


def test_prepare_split_out_dir_and_sequential(gldv2_tree, tmp_path):
    out = tmp_path / "elsewhere"
    prepare_split(gldv2_tree.root, "seq_class10to30to100", out_dir=out)
    df = load_split(gldv2_tree.root, "seq_class10to30to100", splits_dir=out)
    assert S.num_steps(df) == 3
    lock = json.loads((out / "seq_class10to30to100.lock.json").read_text())
    assert lock["counts"]["step_classes"] == [1, 3, 10]


def test_split_lock_sha256_mismatch(gldv2_tree):
    csv_path = prepare_split(gldv2_tree.root, "data30to100")
    text = csv_path.read_text().splitlines()
    text[1] = (
        text[1].replace("True", "False", 1) if "True" in text[1] else text[1].replace("False", "True", 1)
    )
    csv_path.write_text("\n".join(text) + "\n")
    with pytest.raises(DataError) as excinfo:
        load_split(gldv2_tree.root, "data30to100")
    _err(excinfo, str(csv_path), "sha256 mismatch with lock", "data30to100.lock.json", "prepare-data")


def test_split_clean_csv_tampered(gldv2_tree):
    prepare_split(gldv2_tree.root, "data30to100")
    clean = gldv2_tree.root / "splits" / "gldv2_clean.csv"
    clean.write_text(clean.read_text() + "\n")
    with pytest.raises(DataError) as excinfo:
        load_split(gldv2_tree.root, "data30to100")
    _err(excinfo, "gldv2_clean.csv", "sha256 mismatch")


def test_split_missing(gldv2_tree):
    with pytest.raises(DataError) as excinfo:
        load_split(gldv2_tree.root, "class30to100")
    _err(excinfo, "class30to100.csv", "not found", "prepare-data")


def test_split_ratio_mismatch(gldv2_tree):
    prepare_split(gldv2_tree.root, "class30to100", ratio=0.5)
    with pytest.raises(DataError) as excinfo:
        load_split(gldv2_tree.root, "class30to100", ratio=0.3)
    _err(excinfo, "class30to100.lock.json", "ratio 0.5")


def test_prepare_split_train_image_missing(gldv2_tree, helpers):
    lm = gldv2_tree.classes[23]
    for i in lm[:3]:
        helpers.gldv2_path(gldv2_tree.root, "train", i).unlink()
    with pytest.raises(DataError) as excinfo:
        prepare_split(gldv2_tree.root, "class30to100")
    _err(excinfo, "3 of 35", "train_clean.csv", lm[0], lm[1], lm[2])
    assert not (gldv2_tree.root / "splits" / "class30to100.csv").exists()
