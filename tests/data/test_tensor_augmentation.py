"""Batched tensor augmentation and (seed, epoch, index)-determined order: the pieces of exact resume and of
the faster training input pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bctbench.data import IMAGENET_MEAN, IMAGENET_STD, augment_batch, collate_batch, pil_to_uint8, rrc_box
from bctbench.epoch_order import EpochSeededDataset, EpochShuffleSampler
from tests.conftest import patch_pipeline


def _normalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
    return (x.float() - mean) / std


def test_rrc_boxes_stay_inside_and_follow_the_scale() -> None:
    rng = np.random.default_rng(0)
    for _ in range(500):
        h = int(rng.integers(20, 90))
        w = int(h * rng.uniform(0.8, 1.25))  # near-square: the ten tries succeed (no fallback crop)
        x0, y0, x1, y1 = rrc_box(rng, h, w, (0.5, 1.0))
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        ratio = (x1 - x0) / (y1 - y0)
        assert 0.4 <= (x1 - x0) * (y1 - y0) / (h * w) <= 1.0 and 0.5 < ratio < 2.0
    a = [rrc_box(np.random.default_rng(7), 72, 72) for _ in range(3)]
    assert a[0] == a[1] == a[2]


def test_full_box_at_native_size_is_the_normalised_image_and_flip_mirrors() -> None:
    img = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    boxes = torch.tensor([[0.0, 0.0, 16.0, 16.0]] * 2)
    out = augment_batch(img, boxes, torch.tensor([False, True]), 16)
    torch.testing.assert_close(out[0], _normalise(img)[0], atol=1e-4, rtol=0)
    torch.testing.assert_close(out[1], _normalise(img)[1].flip(-1), atol=1e-4, rtol=0)


def test_crop_and_resize_equal_a_bilinear_resize_of_the_crop_inside() -> None:
    img = torch.randint(0, 256, (1, 3, 40, 50), dtype=torch.uint8)
    x0, y0, x1, y1 = 6, 4, 38, 30
    out = augment_batch(img, torch.tensor([[x0, y0, x1, y1]], dtype=torch.float32), torch.tensor([False]), 24)
    crop = _normalise(img)[:, :, y0:y1, x0:x1]
    ref = F.interpolate(crop, size=(24, 24), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out[:, :, 1:-1, 1:-1], ref[:, :, 1:-1, 1:-1], atol=1e-3, rtol=0)


def test_padded_batches_of_mixed_sizes_give_the_same_crops() -> None:
    a = torch.randint(0, 256, (3, 20, 30), dtype=torch.uint8)
    b = torch.randint(0, 256, (3, 28, 18), dtype=torch.uint8)
    boxes = torch.tensor([[2.0, 3.0, 25.0, 18.0], [1.0, 4.0, 17.0, 26.0]])
    flips = torch.tensor([True, False])
    batch = collate_batch(
        [{"images": a, "labels": torch.tensor(0)}, {"images": b, "labels": torch.tensor(1)}]
    )
    assert batch["images"].shape == (2, 3, 28, 30) and batch["labels"].tolist() == [0, 1]
    together = augment_batch(batch["images"], boxes, flips, 12)
    for k, im in enumerate((a, b)):
        alone = augment_batch(im[None], boxes[k : k + 1], flips[k : k + 1], 12)
        torch.testing.assert_close(together[k : k + 1], alone, atol=1e-4, rtol=0)


def test_pil_to_uint8_keeps_pixels() -> None:
    from PIL import Image

    arr = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    out = pil_to_uint8(Image.fromarray(arr))
    assert out.dtype == torch.uint8 and out.shape == (3, 5, 7)
    assert np.array_equal(out.permute(1, 2, 0).numpy(), arr)


def test_epoch_order_is_a_function_of_seed_and_epoch() -> None:
    s = EpochShuffleSampler(10, seed=3)
    s.set_epoch(0)
    e0 = list(s)
    s.set_epoch(1)
    e1 = list(s)
    assert sorted(k % 10 for k in e0) == list(range(10)) and all(k // 10 == 1 for k in e1)
    assert [k % 10 for k in e0] != [k % 10 for k in e1]
    fresh = EpochShuffleSampler(10, seed=3)
    fresh.set_epoch(1)  # a resumed run starting at epoch 1
    assert list(fresh) == e1
    counting = EpochShuffleSampler(10, seed=3)  # nobody calls set_epoch: it counts epochs itself
    assert list(counting) == e0 and list(counting) == e1


class _Images(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> dict:
        return {"images": torch.zeros(3, 30, 40, dtype=torch.uint8), "labels": torch.tensor(i)}


def test_crop_parameters_depend_on_seed_epoch_and_index_only() -> None:
    ds = EpochSeededDataset(_Images(), seed=5, crop_scale=(0.5, 1.0))
    first = {k: (ds[k]["crop_box"].tolist(), bool(ds[k]["flip"])) for k in range(8)}
    again = {k: (ds[k]["crop_box"].tolist(), bool(ds[k]["flip"])) for k in reversed(range(8))}
    assert first == again  # order of access does not matter
    assert first[1] != first[5]  # same item, next epoch: another crop
    other = EpochSeededDataset(_Images(), seed=6, crop_scale=(0.5, 1.0))
    assert other[1]["crop_box"].tolist() != first[1][0]


def test_bf16_falls_back_to_fp32_on_a_cpu_without_it(monkeypatch) -> None:
    import dataclasses

    from bctbench import pipeline

    ctx = pipeline.RunContext.create("smoke")
    ctx.spec = dataclasses.replace(
        ctx.spec, training=dataclasses.replace(ctx.spec.training, precision="bf16-mixed")
    )
    cpu = pipeline.Runtime(accelerator="cpu")
    patch_pipeline(monkeypatch, "cpu_has_bf16", lambda: False)
    assert pipeline.training_precision(ctx, cpu) == "32-true"
    patch_pipeline(monkeypatch, "cpu_has_bf16", lambda: True)
    assert pipeline.training_precision(ctx, cpu) == "bf16-mixed"


@pytest.mark.parametrize(
    "flag_line", ["flags : fpu avx512_bf16 sse", "flags : fpu amx_bf16", "flags : fpu avx2"]
)
def test_cpu_bf16_detection_reads_the_flags(monkeypatch, tmp_path, flag_line) -> None:
    import builtins

    from bctbench import pipeline

    info = tmp_path / "cpuinfo"
    info.write_text(f"processor : 0\n{flag_line}\n")
    real_open = builtins.open
    monkeypatch.setattr(
        builtins, "open", lambda p, *a, **k: real_open(info if p == "/proc/cpuinfo" else p, *a, **k)
    )
    assert pipeline.cpu_has_bf16() == ("bf16" in flag_line)
