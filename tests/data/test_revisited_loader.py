"""Revisited ROxford5k/RParis6k loader: both layouts, query crop on/off, one test per bad gnd case."""

from __future__ import annotations

import pickle

import pytest

from bctbench.datamodules.revisited import load_revisited_eval_set
from bctbench.errors import DataError
from bctbench.evaluation.evalsets import RevisitedEvalSet


def _err(excinfo, *needles: str) -> str:
    assert excinfo.type is DataError
    msg = str(excinfo.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, (needle, msg)
    return msg


def _gnd(**changes) -> dict:
    g = {
        "imlist": [f"db_{k:03d}" for k in range(6)],
        "qimlist": ["query_a", "query_b"],
        "gnd": [
            {"bbx": [1.0, 2.0, 7.5, 8.0], "easy": [0, 2], "hard": [1], "junk": [5]},
            {"bbx": [0, 0, 5, 5], "easy": [], "hard": [3, 4], "junk": []},
        ],
    }
    for key, value in changes.items():
        if key.startswith("q1_"):
            g["gnd"][1][key[3:]] = value
        else:
            g[key] = value
    return g


@pytest.mark.parametrize("layout", ["revisitop", "advbct"])
def test_load_both_layouts(make_revisited, layout):
    root, pkl, jpg = make_revisited(layout)
    es = load_revisited_eval_set(root, "roxford5k")
    assert isinstance(es, RevisitedEvalSet) and es.name == "roxford5k"
    assert [p.name for p in es.gallery_paths] == [f"db_{k:03d}.jpg" for k in range(6)]
    assert [p.name for p in es.query_paths] == ["query_a.jpg", "query_b.jpg"]
    assert all(p.parent == jpg for p in es.query_paths + es.gallery_paths)
    assert es.query_boxes == ((1.0, 2.0, 7.5, 8.0), (0.0, 0.0, 5.0, 5.0))
    assert es.gnd[0]["easy"] == [0, 2] and es.gnd[0]["hard"] == [1] and es.gnd[0]["junk"] == [5]
    assert es.gnd[1]["easy"] == []


def test_no_query_crop(make_revisited):
    root, _, _ = make_revisited()
    es = load_revisited_eval_set(root, "roxford5k", query_crop=False)
    assert es.query_boxes == (None, None)
    assert es.gnd[0]["bbx"] == (1.0, 2.0, 7.5, 8.0)


def test_missing_dataset(tmp_path):
    with pytest.raises(DataError) as excinfo:
        load_revisited_eval_set(tmp_path, "rparis6k")
    _err(excinfo, "gnd_rparis6k.pkl", "not found", "ROxfordParis")


def test_missing_jpg_folder(make_revisited):
    root, _, jpg = make_revisited(images=False)
    jpg.rmdir()
    with pytest.raises(DataError) as excinfo:
        load_revisited_eval_set(root, "roxford5k")
    _err(excinfo, str(jpg), "image folder not found")


def test_missing_images(make_revisited):
    root, pkl, jpg = make_revisited()
    (jpg / "db_004.jpg").unlink()
    (jpg / "query_b.jpg").unlink()
    with pytest.raises(DataError) as excinfo:
        load_revisited_eval_set(root, "roxford5k")
    _err(excinfo, str(jpg), "2 of 8", pkl.name, "query_b.jpg", "db_004.jpg")


def test_gnd_index_out_of_range(make_revisited):
    root, pkl, _ = make_revisited(gnd=_gnd(q1_junk=[2, 6]))
    with pytest.raises(DataError) as excinfo:
        load_revisited_eval_set(root, "roxford5k")
    _err(excinfo, str(pkl), "query 1", "query_b", "'junk'", "index 6 out of range [0, 6)")


def test_gnd_negative_index(make_revisited):
    root, pkl, _ = make_revisited(gnd=_gnd(q1_easy=[-1]))
    with pytest.raises(DataError) as excinfo:
        load_revisited_eval_set(root, "roxford5k")
    _err(excinfo, str(pkl), "query 1", "'easy'", "-1")


def test_gnd_missing_top_level_key(make_revisited):
    g = _gnd()
    del g["qimlist"]
    root, pkl, _ = make_revisited(gnd=g)
    with pytest.raises(DataError) as excinfo:
        load_revisited_eval_set(root, "roxford5k")
    _err(excinfo, str(pkl), "missing key 'qimlist'")


def test_gnd_missing_query_key(make_revisited):
    g = _gnd()
    del g["gnd"][1]["hard"]
    root, pkl, _ = make_revisited(gnd=g)
    with pytest.raises(DataError) as excinfo:
        load_revisited_eval_set(root, "roxford5k")
    _err(excinfo, str(pkl), "query 1", "missing key 'hard'")


def test_gnd_overlapping_easy_hard(make_revisited):
    root, pkl, _ = make_revisited(gnd=_gnd(q1_easy=[3]))
    with pytest.raises(DataError) as excinfo:
        load_revisited_eval_set(root, "roxford5k")
    _err(excinfo, str(pkl), "query 1", "'easy' and 'hard'", "index 3")


def test_gnd_bad_box(make_revisited):
    root, pkl, _ = make_revisited(gnd=_gnd(q1_bbx=[5, 5, 2, 9]))
    with pytest.raises(DataError) as excinfo:
        load_revisited_eval_set(root, "roxford5k")
    _err(excinfo, str(pkl), "query 1", "'bbx'")


def test_gnd_length_mismatch(make_revisited):
    g = _gnd()
    g["gnd"] = g["gnd"][:1]
    root, pkl, _ = make_revisited(gnd=g)
    with pytest.raises(DataError) as excinfo:
        load_revisited_eval_set(root, "roxford5k")
    _err(excinfo, str(pkl), "'gnd'", "2 dicts")


def test_gnd_not_a_pickle(make_revisited):
    root, pkl, _ = make_revisited()
    pkl.write_bytes(b"this is not a pickle")
    with pytest.raises(DataError) as excinfo:
        load_revisited_eval_set(root, "roxford5k")
    _err(excinfo, str(pkl), "cannot unpickle")


def test_gnd_not_a_dict(make_revisited):
    root, pkl, _ = make_revisited()
    pkl.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(DataError) as excinfo:
        load_revisited_eval_set(root, "roxford5k")
    _err(excinfo, str(pkl), "expected a dict")
