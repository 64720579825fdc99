"""bctbench.data: RGB loading of odd files, crop boxes, corrupt files, ImageListDataset, worker errors,
transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from bctbench.data import (
    IMAGENET_MEAN,
    ImageListDataset,
    ImageLoader,
    PackedStrings,
    build_test_transform,
    build_train_transform,
    collate_batch,
    load_rgb,
)
from bctbench.errors import DataError


def _one_line_data_error(excinfo, *needles: str) -> str:
    assert excinfo.type is DataError
    msg = str(excinfo.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, (needle, msg)
    return msg


@pytest.fixture
def rgb_file(tmp_path, helpers):
    return helpers.write_jpeg(tmp_path / "ok.jpg", size=(20, 10))


# ------------------------------------------------------------------------------------------------- load_rgb


def test_load_rgb_plain(rgb_file):
    im = load_rgb(rgb_file)
    assert im.mode == "RGB" and im.size == (20, 10)


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_load_rgb_converts_grayscale_and_cmyk_jpeg(tmp_path, helpers, mode):
    path = helpers.write_jpeg(tmp_path / f"{mode}.jpg", size=(9, 7), mode=mode)
    with Image.open(path) as raw:
        assert raw.mode == mode
    im = load_rgb(path)
    assert im.mode == "RGB" and im.size == (9, 7)


def test_load_rgb_converts_palette_and_png_bytes_named_jpg(tmp_path):
    path = tmp_path / "actually_png.jpg"
    Image.new("P", (6, 5), color=3).save(path, format="PNG")
    im = load_rgb(path)
    assert im.mode == "RGB" and im.size == (6, 5)


def test_load_rgb_crop_box(rgb_file):
    full = np.asarray(load_rgb(rgb_file))
    crop = load_rgb(rgb_file, box=(2, 1, 12.4, 8))  # PIL rounds the box
    assert crop.size == (10, 7)
    assert np.array_equal(np.asarray(crop), full[1:8, 2:12])


def test_load_rgb_invalid_box(rgb_file):
    with pytest.raises(DataError) as excinfo:
        load_rgb(rgb_file, box=(5, 5, 5, 9))
    _one_line_data_error(excinfo, str(rgb_file), "crop box")


def test_load_rgb_tolerates_truncated_jpeg(tmp_path, helpers):
    data = helpers.write_jpeg(tmp_path / "big.jpg", size=(64, 48)).read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) * 3 // 4])  # entropy-coded data cut short, headers intact
    assert load_rgb(cut).size == (64, 48)  # LOAD_TRUNCATED_IMAGES, as revisitop


def test_load_rgb_corrupt_jpeg_raises(tmp_path, rgb_file):
    bad = tmp_path / "header_only.jpg"
    bad.write_bytes(rgb_file.read_bytes()[:100])
    with pytest.raises(DataError) as excinfo:
        load_rgb(bad)
    _one_line_data_error(excinfo, str(bad), "cannot decode image")


def test_load_rgb_garbage_raises(tmp_path):
    bad = tmp_path / "garbage.jpg"
    bad.write_bytes(b"not an image\nat all")
    with pytest.raises(DataError) as excinfo:
        load_rgb(bad)
    _one_line_data_error(excinfo, str(bad), "cannot decode image")


def test_load_rgb_missing_file(tmp_path):
    with pytest.raises(DataError) as excinfo:
        load_rgb(tmp_path / "nope.jpg")
    _one_line_data_error(excinfo, "nope.jpg", "cannot decode image")


# ------------------------------------------------------------------------------------------ ImageListDataset


@pytest.fixture
def files(tmp_path, helpers):
    paths = [helpers.write_jpeg(tmp_path / f"img{k}.jpg", size=(12, 12), seed=k) for k in range(4)]
    bad = tmp_path / "img_bad.jpg"
    bad.write_bytes(b"\xff\xd8 broken")
    return paths, bad


def test_dataset_items(files):
    paths, _ = files
    ds = ImageListDataset(paths, [3, 1, 4, 1], old_labels=[0, -1, 2, -1], indices=[10, 11, 12, 13])
    item = ds[2]
    assert set(item) == {"images", "labels", "old_labels", "index"}
    assert item["images"].shape == (3, 12, 12) and item["images"].dtype == torch.float32
    assert item["labels"].dtype == torch.int64 and int(item["labels"]) == 4
    assert int(item["old_labels"]) == 2 and int(item["index"]) == 12
    plain = ImageListDataset(paths)[1]
    assert int(plain["labels"]) == -1 and int(plain["old_labels"]) == -1 and int(plain["index"]) == 1


def test_dataset_boxes_crop_before_transform(files):
    paths, _ = files
    ds = ImageListDataset(paths, boxes=[(0, 0, 4, 6), None, None, None])
    assert ds[0]["images"].shape == (3, 6, 4) and ds[1]["images"].shape == (3, 12, 12)


def test_dataset_corrupt_raises(files):
    paths, bad = files
    ds = ImageListDataset([paths[0], bad, paths[1]])
    with pytest.raises(DataError) as excinfo:
        ds[1]
    _one_line_data_error(excinfo, str(bad))


def test_dataset_skip_corrupt_counts(files, caplog):
    paths, bad = files
    ds = ImageListDataset([paths[0], bad, paths[1]], [0, 1, 2], skip_corrupt=True)
    with caplog.at_level("WARNING", logger="bctbench.data"):
        item = ds[1]
    assert int(item["labels"]) == 2 and int(item["index"]) == 2  # replaced by the next good image
    assert ds.skipped == 1 and ds.skipped_paths == [str(bad)]
    assert str(bad) in caplog.text
    ds[1]
    assert ds.skipped == 1  # distinct bad files


def test_dataset_skip_corrupt_all_bad(files):
    _, bad = files
    ds = ImageListDataset([bad, bad], skip_corrupt=True)
    with pytest.raises(DataError) as excinfo:
        ds[0]
    _one_line_data_error(excinfo, str(bad), "no decodable image")


def test_loader_worker_error_is_one_line_data_error(files):
    paths, bad = files
    ds = ImageListDataset([paths[0], bad, paths[1], paths[2]])
    loader = ImageLoader(ds, batch_size=2, num_workers=1)
    with pytest.raises(DataError) as excinfo:
        list(loader)
    msg = _one_line_data_error(excinfo, str(bad), "cannot decode image")
    assert "Caught" not in msg and "Traceback" not in msg


def test_loader_skip_corrupt_counts_across_workers(files):
    paths, bad = files
    ds = ImageListDataset([paths[0], bad, paths[1], paths[2]], [0, 1, 2, 3], skip_corrupt=True)
    batches = list(ImageLoader(ds, batch_size=2, num_workers=1))
    assert [b["labels"].tolist() for b in batches] == [[0, 2], [2, 3]]
    assert ds.skipped == 1


def test_loader_batches_main_process(files):
    paths, _ = files
    ds = ImageListDataset(paths, [0, 1, 2, 3], transform=build_test_transform(8))
    (batch,) = list(ImageLoader(ds, batch_size=4))
    assert batch["images"].shape == (4, 3, 8, 8) and batch["labels"].dtype == torch.int64
    assert batch["index"].tolist() == [0, 1, 2, 3]


def test_collate_batch_shapes(files):
    paths, _ = files
    ds = ImageListDataset(paths[:2], transform=build_test_transform(6))
    batch = collate_batch([ds[0], ds[1]])
    assert batch["images"].shape == (2, 3, 6, 6) and batch["old_labels"].shape == (2,)


# ------------------------------------------------------------------------------------------------ transforms


def test_transforms_shapes_and_normalisation():
    im = Image.new("RGB", (40, 20), color=(124, 116, 104))  # ~ ImageNet mean * 255
    for resize in ("squash", "short_side"):
        x = build_test_transform(16, resize=resize)(im)
        assert x.shape == (3, 16, 16)
        assert x.abs().max() < 0.02  # normalised around the mean
    assert build_train_transform(16)(im).shape == (3, 16, 16)
    assert IMAGENET_MEAN == (0.485, 0.456, 0.406)
    with pytest.raises(ValueError):
        build_test_transform(16, resize="crop")


def test_squash_vs_short_side_geometry():
    arr = np.zeros((10, 40, 3), dtype=np.uint8)
    arr[:, :20] = 255  # left half white
    im = Image.fromarray(arr)
    squash = build_test_transform(10, "squash")(im)
    centre = build_test_transform(10, "short_side")(im)
    # squash keeps both halves; the centre crop sees only the middle 10 columns (5 white, 5 black)
    assert (squash[0, :, :5] > 0).all() and (squash[0, :, -5:] < 0).all()
    assert (centre[0, :, :4] > 0).all() and (centre[0, :, -4:] < 0).all()


def test_packed_strings():
    items = ["a/b.jpg", "", "ünï/cödé.jpg", "x" * 300]
    packed = PackedStrings(items)
    assert len(packed) == 4 and list(packed) == items and packed[-1] == items[-1]
    assert packed[1:3] == items[1:3]
    with pytest.raises(IndexError):
        packed[4]


def test_cache_decoded_decodes_each_file_once(files):
    paths, _ = files
    ds = ImageListDataset(paths, cache_decoded=True)
    first = ds[0]["images"]
    paths[0].unlink()  # a second read would fail if the decoded image were not kept
    assert torch.equal(ds[0]["images"], first)
    plain = ImageListDataset(paths[1:])
    paths[1].unlink()
    with pytest.raises(DataError):
        plain[0]
