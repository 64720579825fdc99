"""The default synthetic dataset is learnable but not saturated (slow: about 2-3 minutes on a 2-core CPU).

A four-conv-layer CNN (64 px input, 128-d embedding, softmax cross-entropy) is trained on the GLDv2-format
train split, once on 30 % of the classes (the ``class30to100`` old-class rule of
``docs/data_formats.md`` §4.1) and once on 100 %, with the same number of optimiser steps (the same compute),
and evaluated on the revisited-format ``rsynth`` set (disjoint landmarks, queries cropped to ``bbx``, medium
protocol). It must clearly beat the colour-histogram baseline and an untrained net; the 30 % model must land in
a middle band and the 100 % model noticeably higher, still below saturation.
"""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from bctbench.datamodules.synthetic import SyntheticConfig, ensure_synthetic, gldv2_root

from .test_synthetic import colour_histograms, gldv2_eval_arrays, gldv2_map100, revisited_map, rsynth_arrays

STEPS = 640  # per model (same compute): about 7 epochs of the full train split, 24 of the 30 % split
BATCH = 64
WIDTH = 16  # conv widths 16-32-64-128 (the benchmark's tinycnn family at w=16)
EMBED = 128
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


class SmallNet(nn.Module):
    def __init__(self, n_classes: int, width: int = WIDTH, embed: int = EMBED) -> None:
        super().__init__()

        def block(i: int, o: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True)
            )

        w = width
        self.features = nn.Sequential(
            block(3, w), nn.MaxPool2d(2), block(w, 2 * w), nn.MaxPool2d(2),
            block(2 * w, 4 * w), nn.MaxPool2d(2), block(4 * w, 8 * w),
        )  # fmt: skip
        self.neck = nn.Sequential(nn.Linear(8 * w, embed), nn.BatchNorm1d(embed))
        self.classifier = nn.Linear(embed, n_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.neck(self.features(x).mean((2, 3)))


def normalise(x: torch.Tensor) -> torch.Tensor:
    return (x.float() / 255 - MEAN) / STD


def augment(x: torch.Tensor, size: int = 64) -> torch.Tensor:
    """Batched RandomResizedCrop(size, scale=(0.5, 1), ratio=(3/4, 4/3)) + horizontal flip on uint8 [B, 3, H, W]."""
    b = x.shape[0]
    area = torch.empty(b).uniform_(0.5, 1.0)
    ratio = torch.empty(b).uniform_(math.log(3 / 4), math.log(4 / 3)).exp()
    sw, sh = (area * ratio).sqrt().clamp(max=1), (area / ratio).sqrt().clamp(max=1)
    flip = torch.where(torch.rand(b) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = sw * flip, sh
    theta[:, 0, 2], theta[:, 1, 2] = (torch.rand(b) * 2 - 1) * (1 - sw), (torch.rand(b) * 2 - 1) * (1 - sh)
    grid = F.affine_grid(theta, [b, 3, size, size], align_corners=False)
    return F.grid_sample(normalise(x), grid, mode="bilinear", align_corners=False)


@torch.no_grad()
def embed_all(net: SmallNet, images: np.ndarray) -> np.ndarray:
    net.eval()
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    out = [F.normalize(net.embed(normalise(x[i : i + 256])), dim=1) for i in range(0, len(x), 256)]
    return torch.cat(out).numpy()


def train(x: torch.Tensor, y: torch.Tensor, n_classes: int, steps: int = STEPS, seed: int = 0) -> SmallNet:
    """SGD (momentum 0.9, nesterov, wd 5e-4), one-cycle LR peaking at 0.1, ``steps`` batches of 64."""
    torch.manual_seed(seed)
    net = SmallNet(n_classes)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps, pct_start=0.15)
    net.train()
    done = 0
    while done < steps:
        perm = torch.randperm(len(x))
        for i in range(0, len(x) - BATCH + 1, BATCH):
            idx = perm[i : i + BATCH]
            loss = F.cross_entropy(net.classifier(net.embed(augment(x[idx]))), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            done += 1
            if done == steps:
                return net
    return net


def load_train(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """All train images (uint8 [N, 3, 72, 72]) and labels = rank of the landmark_id
    (``docs/data_formats.md`` §3.2)."""
    root = gldv2_root(path)
    with open(root / "train_clean.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    rank = {lid: i for i, lid in enumerate(sorted(int(r["landmark_id"]) for r in rows))}
    images, labels = [], []
    for r in rows:
        for iid in r["images"].split():
            with Image.open(root / "train" / iid[0] / iid[1] / iid[2] / f"{iid}.jpg") as im:
                images.append(np.asarray(im.convert("RGB")))
            labels.append(rank[int(r["landmark_id"])])
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), torch.tensor(labels)


def old_classes(n_classes: int, ratio: float = 0.3) -> np.ndarray:
    a = np.arange(n_classes)
    np.random.RandomState(666).shuffle(a)
    return np.sort(a[: int(n_classes * ratio)])


@pytest.fixture(scope="module")
def default_set(request) -> Path:
    # shared with test_synthetic.py and reused across runs while the generator version and config match
    root = request.config.cache.mkdir("bctbench_synthetic")
    return ensure_synthetic(root, name="synth", config=SyntheticConfig())


@pytest.mark.slow
def test_learnable_but_not_saturated(default_set):
    x, y = load_train(default_set)
    q, db, gnd = rsynth_arrays(default_set)
    gq, gg, sol = gldv2_eval_arrays(default_set)
    n_classes = int(y.max()) + 1

    def scores(net: SmallNet) -> tuple[float, float]:
        rs = revisited_map(embed_all(net, q) @ embed_all(net, db).T, gnd)
        gl = gldv2_map100(embed_all(net, gq) @ embed_all(net, gg).T, sol)
        return rs, gl

    hist = revisited_map(colour_histograms(q) @ colour_histograms(db).T, gnd)
    hist_gl = gldv2_map100(colour_histograms(gq) @ colour_histograms(gg).T, sol)
    torch.manual_seed(0)
    untrained, untrained_gl = scores(SmallNet(n_classes))

    old = torch.from_numpy(old_classes(n_classes))
    remap = torch.full((n_classes,), -1, dtype=torch.long)
    remap[old] = torch.arange(len(old))
    keep = remap[y] >= 0
    t0 = time.perf_counter()
    m30, gl30 = scores(train(x[keep], remap[y[keep]], len(old)))
    t30 = time.perf_counter() - t0
    t0 = time.perf_counter()
    m100, gl100 = scores(train(x, y, n_classes))
    t100 = time.perf_counter() - t0

    print(f"\n{'model':<34}{'rsynth M mAP':>14}{'gldv2 mAP@100':>15}{'train+eval s':>14}")
    print(f"{'colour histogram':<34}{hist:>14.4f}{hist_gl:>15.4f}")
    print(f"{'untrained net':<34}{untrained:>14.4f}{untrained_gl:>15.4f}")
    print(
        f"{f'30% classes ({int(keep.sum())} img, {len(old)} cls)':<34}{m30:>14.4f}{gl30:>15.4f}{t30:>14.0f}"
    )
    print(f"{f'100% classes ({len(y)} img, {n_classes} cls)':<34}{m100:>14.4f}{gl100:>15.4f}{t100:>14.0f}")

    # Observed on the default set (seed 0, 2-core CPU): histogram 0.05, untrained 0.05, 30 % 0.31, 100 % 0.40
    # (GLDv2 mAP@100: 0.005 / 0.007 / 0.35 / 0.51). The bounds leave room for thread-level nondeterminism.
    baseline = max(hist, untrained)
    assert m30 > baseline + 0.10, f"30% model {m30:.3f} not clearly above the baselines ({baseline:.3f})"
    assert 0.15 <= m30 <= 0.65, f"30% model medium mAP {m30:.3f} outside the intended band"
    assert m100 >= m30 + 0.03, f"100% model {m100:.3f} not above the 30% model {m30:.3f}"
    assert m100 <= 0.85, f"100% model medium mAP {m100:.3f}: the dataset is close to saturation"
    assert gl100 > gl30 > hist_gl + 0.1
