"""Embedded synthetic landmark dataset, written in the real GLDv2 and revisited on-disk formats.

Real GLDv2 / ROxford5k cannot be downloaded here, so the default benchmark runs on procedurally generated
"landmarks". The files follow ``data_formats.md`` §1, §2, §5 and §6 exactly, so the real loaders
(``datamodules/gldv2.py``, ``datamodules/revisited.py``) are what reads them.

Layout under ``<data_root>/<name>/``::

    gldv2/train_clean.csv                 landmark_id,images   (images: space-separated 16-hex ids)
    gldv2/train/a/b/c/<id>.jpg
    gldv2/index.csv                       id                   (retrieval gallery)
    gldv2/index/a/b/c/<id>.jpg
    gldv2/test.csv                        id                   (query candidates)
    gldv2/test/a/b/c/<id>.jpg
    gldv2/retrieval_solution_v2.1.csv     id,images,Usage      (images: index ids or None; Public/Private/Ignored)
    datasets/rsynth/gnd_rsynth.pkl        {imlist, qimlist, gnd[{bbx, easy, hard, junk}]}
    datasets/rsynth/jpg/<name>.jpg        database and query images (queries are not in imlist)
    manifest.json                         generator version, seed, config, counts, per-file sha256 (written last)

Design. Every landmark is a procedurally drawn building (body, roof, towers, windows, wall texture and a few
unique motifs) stored as a *material map*; colours are drawn per image from a shared distribution, so colour
histograms do not identify a landmark. Every image is one view of a landmark: a homography (scale, offset,
rotation, yaw/pitch), cluttered background, occluders, lighting, colour cast, blur, noise and JPEG. The
visible fraction ``f`` of the landmark (in frame and not occluded) decides the revisited labels: easy
``f > 0.6`` (and not an extreme view), hard ``0.25 <= f <= 0.6`` (or extreme view), junk ``f < 0.25``.
Training landmarks, revisited landmarks and GLDv2-eval landmarks are disjoint; galleries also hold views of
distractor landmarks and landmark-free clutter images.

Determinism: the plan (counts, ids, assignments) comes from ``seed``; each image is drawn by its own RNG
seeded from ``(seed, split, index)`` and each landmark from ``(seed, landmark)``, so the worker count and the
process-pool order never change a byte. JPEG quality is fixed and no timestamps are written.
"""

from __future__ import annotations

import colorsys
import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import math
import multiprocessing as mp
import os
import pickle
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from bctbench.errors import DataError

__all__ = [
    "GENERATOR_VERSION",
    "REVISITED_NAME",
    "SyntheticConfig",
    "ensure_synthetic",
    "gldv2_root",
    "make_synthetic",
    "revisited_root",
    "synthetic_size",
    "verify_synthetic",
]

GENERATOR_VERSION = "1.0"
REVISITED_NAME = "rsynth"
MANIFEST = "manifest.json"

# visible-fraction thresholds of the revisited labels
EASY_MIN_VISIBLE = 0.6
JUNK_MAX_VISIBLE = 0.25

# split codes (part of every per-image RNG seed and of the image id)
_TRAIN, _REV_DB, _REV_QUERY, _GL_INDEX, _GL_TEST = 1, 2, 3, 4, 5
_SPLIT_NAMES = {
    _TRAIN: "train",
    _REV_DB: "rev_db",
    _REV_QUERY: "rev_query",
    _GL_INDEX: "index",
    _GL_TEST: "test",
}

_CANVAS = 160  # canonical landmark material-map size (pixels)
_SS = 2  # supersampling factor of the rendering
_N_MATERIALS = 8  # 0 background, 1 wall, 2 wall2, 3 roof, 4 opening, 5 trim, 6 motif a, 7 motif b


@dataclass(frozen=True)
class SyntheticConfig:
    """Sizes and difficulty of the synthetic dataset. Part of the manifest: any change regenerates."""

    image_size: int = 72
    jpeg_quality: int = 90
    difficulty: float = 0.45
    # training landmarks (long-tailed; classes with n = 1, 2, 3 exercise every split rule)
    train_classes: int = 360
    train_n1: int = 12
    train_n2: int = 12
    train_n3: int = 12
    train_median: float = 14.5
    train_sigma: float = 0.75
    train_max: int = 60
    # revisited-format eval set ``rsynth``
    rev_landmarks: int = 14
    rev_queries_per_landmark: int = 5
    rev_db_per_landmark: int = 55
    rev_distractor_landmarks: int = 120
    rev_views_per_distractor: int = 4
    rev_clutter: int = 60
    # GLDv2-format eval (index gallery + test queries + solution)
    gl_eval_landmarks: int = 100
    gl_index_min: int = 2
    gl_index_max: int = 12
    gl_queries_per_landmark: int = 2
    gl_public_fraction: float = 0.34
    gl_distractor_landmarks: int = 200
    gl_views_per_distractor: int = 4
    gl_clutter_index: int = 100
    gl_unscored_test: int = 40

    @classmethod
    def tiny(cls) -> SyntheticConfig:
        """CI / smoke size: 24 classes, a few hundred images, about two seconds."""
        return cls(
            train_classes=24,
            train_n1=2,
            train_n2=2,
            train_n3=2,
            train_median=6.0,
            train_sigma=0.4,
            train_max=12,
            rev_landmarks=4,
            rev_queries_per_landmark=3,
            rev_db_per_landmark=16,
            rev_distractor_landmarks=10,
            rev_views_per_distractor=3,
            rev_clutter=6,
            gl_eval_landmarks=8,
            gl_index_min=2,
            gl_index_max=5,
            gl_queries_per_landmark=2,
            gl_distractor_landmarks=15,
            gl_views_per_distractor=2,
            gl_clutter_index=6,
            gl_unscored_test=6,
        )

    @classmethod
    def from_dict(cls, d: dict) -> SyntheticConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise DataError(f"unknown SyntheticConfig keys {unknown}")
        return cls(**d)


def synthetic_size(size: str) -> SyntheticConfig:
    """Config for a named size: ``default`` or ``tiny`` (the benchmark specs' ``synthetic_size``)."""
    if size == "default":
        return SyntheticConfig()
    if size == "tiny":
        return SyntheticConfig.tiny()
    raise DataError(f"unknown synthetic size {size!r}; valid: default, tiny")


def gldv2_root(path: str | os.PathLike) -> Path:
    """GLDv2-format root inside a generated dataset directory."""
    return Path(path) / "gldv2"


def revisited_root(path: str | os.PathLike) -> Path:
    """Revisited-format dataset folder (``gnd_rsynth.pkl`` + ``jpg/``) inside a generated dataset directory."""
    return Path(path) / "datasets" / REVISITED_NAME


# ----------------------------------------------------------------------------------------------------------
# landmarks
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Landmark:
    matmap: np.ndarray  # uint8 [S, S] material index, 0 = not the landmark
    points: np.ndarray  # float64 [N, 2] canonical (x, y) samples of the landmark area (for visibility)
    bbox: tuple[float, float, float, float]  # x0, y0, x1, y1 of the landmark in the canvas
    pimg: Image.Image  # matmap as a palette image (colours set per view)
    alpha: Image.Image  # 0/255 landmark mask
    lum: np.ndarray  # material luminances


def _box(xy) -> list[float]:
    x0, y0, x1, y1 = (float(v) for v in xy)
    return [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)]


def _rect(d: ImageDraw.ImageDraw, xy, fill) -> None:
    d.rectangle(_box(xy), fill=fill)


def _ell(d: ImageDraw.ImageDraw, xy, fill) -> None:
    d.ellipse(_box(xy), fill=fill)


def _arch(d: ImageDraw.ImageDraw, x0: float, y0: float, x1: float, y1: float, fill: int) -> None:
    """Round-topped opening (door, arched window)."""
    w = x1 - x0
    _rect(d, [x0, y0 + w / 2, x1, y1], fill=fill)
    _ell(d, [x0, y0, x1, y0 + w], fill=fill)


def _star(cx: float, cy: float, r0: float, r1: float, n: int, phase: float) -> list[tuple[float, float]]:
    pts = []
    for k in range(2 * n):
        r = r1 if k % 2 == 0 else r0
        a = phase + math.pi * k / n
        pts.append((cx + r * math.cos(a), cy + r * math.sin(a)))
    return pts


def _blob(rng: np.random.Generator, cx: float, cy: float, r: float, n: int) -> list[tuple[float, float]]:
    ang = np.sort(rng.uniform(0, 2 * math.pi, n))
    rad = r * rng.uniform(0.45, 1.0, n)
    return [(cx + a * math.cos(t), cy + a * math.sin(t)) for a, t in zip(rad, ang, strict=True)]


def _roof(d, rng, kind: str, x0: float, x1: float, ytop: float, h: float, mat: int, spire_mat: int) -> None:
    w = x1 - x0
    cx = (x0 + x1) / 2
    if kind == "gable":
        d.polygon([(x0 - 1, ytop), (x1 + 1, ytop), (cx, ytop - h)], fill=mat)
    elif kind == "dome":
        d.pieslice([x0, ytop - h, x1, ytop + h], 180, 360, fill=mat)
        _rect(d, [cx - 0.5, ytop - h - 0.35 * h, cx + 0.5, ytop - h], fill=spire_mat)
    elif kind == "spire":
        d.polygon([(x0, ytop), (x1, ytop), (cx, ytop - 2.2 * h)], fill=mat)
    elif kind == "onion":
        _ell(d, [x0 - 0.1 * w, ytop - 1.1 * h, x1 + 0.1 * w, ytop + 0.1 * h], fill=mat)
        d.polygon(
            [(cx - 0.15 * w, ytop - 0.9 * h), (cx + 0.15 * w, ytop - 0.9 * h), (cx, ytop - 1.7 * h)], fill=mat
        )
    elif kind == "mansard":
        d.polygon([(x0, ytop), (x1, ytop), (x1 - 0.2 * w, ytop - h), (x0 + 0.2 * w, ytop - h)], fill=mat)
    elif kind == "crenel":
        n = max(2, int(rng.integers(3, 8)))
        cw = w / (2 * n - 1)
        for k in range(n):
            _rect(d, [x0 + 2 * k * cw, ytop - 0.35 * h, x0 + (2 * k + 1) * cw, ytop], fill=mat)
    elif kind == "stepped":
        steps = int(rng.integers(2, 4))
        for k in range(steps):
            inset = w * 0.18 * k
            _rect(d, [x0 + inset, ytop - h * (k + 1) / steps, x1 - inset, ytop - h * k / steps], fill=mat)
    # "flat": nothing


def _openings(d, rng, x0, y0, x1, y1, rows, cols, shape, fill, skip) -> None:
    w, h = x1 - x0, y1 - y0
    cw, rh = w / cols, h / rows
    fw = rng.uniform(0.35, 0.65)
    fh = rng.uniform(0.4, 0.75)
    for r in range(rows):
        for c in range(cols):
            if skip[r % skip.shape[0], c % skip.shape[1]]:
                continue
            ox = x0 + c * cw + cw * (1 - fw) / 2
            oy = y0 + r * rh + rh * (1 - fh) / 2
            box = [ox, oy, ox + cw * fw, oy + rh * fh]
            if shape == "rect":
                _rect(d, box, fill=fill)
            elif shape == "arch":
                _arch(d, *box, fill=fill)
            elif shape == "round":
                s = min(cw * fw, rh * fh)
                cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
                _ell(d, [cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2], fill=fill)
            else:  # slit
                cx = (box[0] + box[2]) / 2
                _rect(
                    d, [cx - max(0.6, cw * fw * 0.2), box[1], cx + max(0.6, cw * fw * 0.2), box[3]], fill=fill
                )


def _texture(d, rng, x0, y0, x1, y1, kind: str, fill: int) -> None:
    w, h = x1 - x0, y1 - y0
    if kind == "bands":
        n = int(rng.integers(2, 6))
        t = max(1.0, h * rng.uniform(0.02, 0.06))
        for k in range(1, n + 1):
            y = y0 + h * k / (n + 1)
            _rect(d, [x0, y - t / 2, x1, y + t / 2], fill=fill)
    elif kind == "bricks":
        step = rng.uniform(4.0, 8.0)
        y, row = y0 + step, 0
        while y < y1:
            d.line([(x0, y), (x1, y)], fill=fill, width=1)
            bw = 2.2 * step
            xs = x0 + (bw / 2 if row % 2 else 0)
            while xs < x1:
                d.line([(xs, y - step), (xs, y)], fill=fill, width=1)
                xs += bw
            y += step
            row += 1
    elif kind == "pilasters":
        n = int(rng.integers(3, 9))
        t = max(1.0, w * rng.uniform(0.015, 0.04))
        for k in range(n + 1):
            x = x0 + w * k / n
            _rect(d, [x - t / 2, y0, x + t / 2, y1], fill=fill)
    elif kind == "lattice":
        step = rng.uniform(6.0, 12.0)
        k = -h
        while k < w:
            d.line([(x0 + k, y1), (x0 + k + h, y0)], fill=fill, width=1)
            d.line([(x0 + k, y0), (x0 + k + h, y1)], fill=fill, width=1)
            k += step
    elif kind == "stripes":
        n = int(rng.integers(4, 10))
        for k in range(0, n, 2):
            _rect(d, [x0, y0 + h * k / n, x1, y0 + h * (k + 1) / n], fill=fill)


def _motif(d, rng, cx: float, cy: float, r: float, mat: int, opening: int) -> None:
    kind = str(rng.choice(["rose", "clock", "star", "blob", "cross", "diamond", "ring", "glyph"]))
    if kind == "rose":
        _ell(d, [cx - r, cy - r, cx + r, cy + r], fill=mat)
        n = int(rng.integers(5, 13))
        ph = rng.uniform(0, math.pi)
        for k in range(n):
            a = ph + 2 * math.pi * k / n
            d.line(
                [(cx, cy), (cx + 0.9 * r * math.cos(a), cy + 0.9 * r * math.sin(a))], fill=opening, width=1
            )
        _ell(d, [cx - 0.25 * r, cy - 0.25 * r, cx + 0.25 * r, cy + 0.25 * r], fill=opening)
    elif kind == "clock":
        _ell(d, [cx - r, cy - r, cx + r, cy + r], fill=mat)
        for length, a in ((0.85, rng.uniform(0, 2 * math.pi)), (0.55, rng.uniform(0, 2 * math.pi))):
            d.line(
                [(cx, cy), (cx + length * r * math.cos(a), cy + length * r * math.sin(a))],
                fill=opening,
                width=2,
            )
    elif kind == "star":
        d.polygon(
            _star(cx, cy, r * rng.uniform(0.3, 0.6), r, int(rng.integers(4, 9)), rng.uniform(0, 6.3)),
            fill=mat,
        )
    elif kind == "blob":
        d.polygon(_blob(rng, cx, cy, r, int(rng.integers(5, 9))), fill=mat)
    elif kind == "cross":
        t = r * rng.uniform(0.2, 0.4)
        _rect(d, [cx - t, cy - r, cx + t, cy + r], fill=mat)
        _rect(d, [cx - r, cy - r * 0.4 - t, cx + r, cy - r * 0.4 + t], fill=mat)
    elif kind == "diamond":
        d.polygon([(cx, cy - r), (cx + 0.7 * r, cy), (cx, cy + r), (cx - 0.7 * r, cy)], fill=mat)
        d.polygon(
            [(cx, cy - 0.4 * r), (cx + 0.3 * r, cy), (cx, cy + 0.4 * r), (cx - 0.3 * r, cy)], fill=opening
        )
    elif kind == "ring":
        _ell(d, [cx - r, cy - r, cx + r, cy + r], fill=mat)
        _ell(d, [cx - 0.55 * r, cy - 0.55 * r, cx + 0.55 * r, cy + 0.55 * r], fill=opening)
    else:  # glyph: a few bars, like lettering or a relief
        for _ in range(int(rng.integers(3, 6))):
            x = cx + rng.uniform(-r, r)
            y = cy + rng.uniform(-0.6 * r, 0.6 * r)
            if rng.random() < 0.5:
                _rect(d, [x - 0.5, y - 0.5 * r, x + 1.0, y + 0.5 * r], fill=mat)
            else:
                _rect(d, [x - 0.5 * r, y - 0.5, x + 0.5 * r, y + 1.0], fill=mat)


def _make_landmark(rng: np.random.Generator) -> _Landmark:
    S = _CANVAS
    img = Image.new("L", (S, S), 0)
    d = ImageDraw.Draw(img)
    yg = S * 0.94
    W = rng.uniform(0.38, 0.82) * S
    H = rng.uniform(0.22, 0.5) * S
    cx = S / 2 + rng.uniform(-0.05, 0.05) * S
    x0, x1, y0 = cx - W / 2, cx + W / 2, yg - H
    parts: list[tuple[float, float, float, float, int]] = []  # wall rectangles (x0, y0, x1, y1, material)

    # wings
    if rng.random() < 0.5:
        ww = rng.uniform(0.08, 0.2) * S
        wh = H * rng.uniform(0.35, 0.8)
        sides = [-1, 1] if rng.random() < 0.6 else [int(rng.choice([-1, 1]))]
        for s in sides:
            wx0, wx1 = (x0 - ww, x0) if s < 0 else (x1, x1 + ww)
            wx0, wx1 = max(2.0, wx0), min(S - 2.0, wx1)
            parts.append((wx0, yg - wh, wx1, yg, 2))
    parts.append((x0, y0, x1, yg, 1))

    # towers
    n_towers = int(rng.choice([0, 1, 1, 2, 2, 3]))
    towers = []
    for _ in range(n_towers):
        tw = rng.uniform(0.06, 0.17) * S
        tx = rng.uniform(x0 + tw / 2, x1 - tw / 2) if rng.random() < 0.7 else float(rng.choice([x0, x1]))
        top = max(0.3 * S * rng.uniform(0.3, 1.0), y0 - rng.uniform(0.08, 0.45) * S)
        towers.append((tx - tw / 2, top, tx + tw / 2, yg, 2))
    for p in parts + towers:
        _rect(d, p[:4], fill=p[4])

    # wall texture on body (and maybe towers)
    tex = str(rng.choice(["bands", "bricks", "pilasters", "lattice", "stripes", "plain"]))
    if tex != "plain":
        _texture(d, rng, x0, y0, x1, yg, tex, 5)
    # windows / doors
    rows = int(rng.integers(1, 5))
    cols = int(rng.integers(2, 10))
    shape = str(rng.choice(["rect", "arch", "round", "slit"]))
    skip = rng.random((int(rng.integers(1, 4)), int(rng.integers(1, 4)))) < rng.uniform(0.0, 0.35)
    door_h = H * rng.uniform(0.25, 0.45)
    _openings(d, rng, x0 + 0.04 * W, y0 + 0.08 * H, x1 - 0.04 * W, yg - door_h, rows, cols, shape, 4, skip)
    n_doors = int(rng.integers(1, 4))
    dw = W * rng.uniform(0.07, 0.16)
    for k in range(n_doors):
        dx = cx + (k - (n_doors - 1) / 2) * dw * rng.uniform(1.6, 2.6)
        _arch(d, dx - dw / 2, yg - door_h, dx + dw / 2, yg, 4)
    for t in towers:
        tw = t[2] - t[0]
        n_win = int(rng.integers(1, 4))
        th = t[3] - t[1]
        for k in range(n_win):
            wy = t[1] + th * (0.1 + 0.5 * k / max(1, n_win))
            _arch(d, t[0] + 0.3 * tw, wy, t[2] - 0.3 * tw, wy + 0.12 * th, 4)
    for p in parts[:-1]:
        pw, ph = p[2] - p[0], p[3] - p[1]
        _openings(
            d,
            rng,
            p[0] + 0.1 * pw,
            p[1] + 0.1 * ph,
            p[2] - 0.1 * pw,
            p[3] - 0.2 * ph,
            int(rng.integers(1, 3)),
            int(rng.integers(1, 3)),
            shape,
            4,
            skip,
        )

    # roofs
    body_roof = str(rng.choice(["gable", "dome", "mansard", "crenel", "stepped", "flat", "gable"]))
    _roof(d, rng, body_roof, x0, x1, y0, rng.uniform(0.08, 0.25) * S, 3, 5)
    for t in towers:
        kind = str(rng.choice(["spire", "dome", "onion", "crenel", "gable", "flat"]))
        _roof(d, rng, kind, t[0], t[2], t[1], rng.uniform(0.05, 0.14) * S, 3, 5)
    for p in parts[:-1]:
        _roof(
            d,
            rng,
            str(rng.choice(["gable", "flat", "crenel", "mansard"])),
            p[0],
            p[2],
            p[1],
            rng.uniform(0.03, 0.1) * S,
            3,
            5,
        )

    # distinctive motifs (unique to this landmark)
    holders = [(x0, y0, x1, yg)] + [t[:4] for t in towers]
    for k in range(int(rng.integers(2, 5))):
        hx0, hy0, hx1, hy1 = holders[int(rng.integers(len(holders)))]
        r = rng.uniform(0.04, 0.1) * S
        mx = rng.uniform(hx0 + r, max(hx0 + r + 1, hx1 - r))
        my = rng.uniform(hy0 + r, max(hy0 + r + 1, hy1 - 1.5 * r))
        _motif(d, rng, mx, my, r, 6 + (k % 2), 4)

    matmap = np.asarray(img, dtype=np.uint8).copy()
    ys, xs = np.nonzero(matmap)
    if xs.size == 0:  # cannot happen with the geometry above; keep the renderer total
        matmap[S // 2, S // 2] = 1
        ys, xs = np.nonzero(matmap)
    # visibility samples: a regular sub-grid of the landmark's pixels
    sel = (ys % 3 == 0) & (xs % 3 == 0)
    pts = np.stack([xs[sel], ys[sel]], axis=1).astype(np.float64) + 0.5
    bbox = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
    pimg = Image.fromarray(matmap, "P")
    alpha = Image.fromarray(np.where(matmap > 0, 255, 0).astype(np.uint8), "L")
    lum = _luminances(np.random.default_rng(rng.integers(2**63)))
    return _Landmark(matmap=matmap, points=pts, bbox=bbox, pimg=pimg, alpha=alpha, lum=lum)


@lru_cache(maxsize=32)
def _landmark(seed: int, landmark: int) -> _Landmark:
    return _make_landmark(np.random.default_rng([seed, 1000, landmark]))


# ----------------------------------------------------------------------------------------------------------
# views
# ----------------------------------------------------------------------------------------------------------


def _colour(rng: np.random.Generator, v: float, sat_max: float = 0.75) -> np.ndarray:
    """Random hue and saturation at value ``v`` (RGB floats in 0..1)."""
    h, sat = rng.random(), rng.uniform(0.0, sat_max)
    return np.array(colorsys.hsv_to_rgb(h, sat, min(1.0, max(0.03, float(v)))))


def _away(rng: np.random.Generator, v: float, lo: float, hi: float, darker_p: float = 0.5) -> float:
    """A value differing from ``v`` by lo..hi, on the side that fits in [0, 1]."""
    delta = rng.uniform(lo, hi)
    down = rng.random() < darker_p
    if (down and v - delta < 0.03) or (not down and v + delta > 1.0):
        down = not down
    return float(np.clip(v - delta if down else v + delta, 0.03, 1.0))


def _luminances(rng: np.random.Generator) -> np.ndarray:
    """Per-landmark material luminances (float [8]); hue and saturation are drawn per image."""
    lum = np.zeros(_N_MATERIALS)
    vw = rng.uniform(0.3, 0.9)
    lum[1] = vw
    lum[2] = float(np.clip(vw + rng.normal(0, 0.08), 0.05, 1.0))
    lum[3] = _away(rng, vw, 0.15, 0.45)
    lum[4] = _away(rng, vw, 0.25, 0.6, darker_p=0.85)
    lum[5] = _away(rng, vw, 0.1, 0.3)
    lum[6] = _away(rng, vw, 0.25, 0.6)
    lum[7] = _away(rng, vw, 0.25, 0.6)
    return lum


_SAT_MAX = (0.0, 0.6, 0.6, 0.8, 0.5, 0.5, 0.9, 0.9)


def _palette(rng: np.random.Generator, lum: np.ndarray, k: float) -> np.ndarray:
    """Per-image material colours (float [8, 3] in 0..1): the landmark's luminance structure, jittered, with
    hue and saturation drawn per image and material from one distribution shared by every landmark."""
    pal = np.zeros((_N_MATERIALS, 3))
    jitter = rng.normal(0, 0.06 * k, _N_MATERIALS)
    for m in range(1, _N_MATERIALS):
        pal[m] = _colour(rng, lum[m] + jitter[m], _SAT_MAX[m])
    return pal


def _homography(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """3x3 H with dst ~ H @ src for 4 point pairs ([4, 2] each)."""
    a, b = [], []
    for (x, y), (u, v) in zip(src, dst, strict=True):
        a.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        a.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        b += [u, v]
    h = np.linalg.solve(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
    return np.append(h, 1.0).reshape(3, 3)


def _project(h: np.ndarray, pts: np.ndarray) -> np.ndarray:
    p = pts @ h[:, :2].T + h[:, 2]
    return p[:, :2] / p[:, 2:3]


@dataclass(frozen=True)
class _ViewParams:
    scale: tuple[float, float]  # landmark's larger side / frame side
    offset: float  # max |centre offset| / frame side
    yaw: float
    rot: float  # degrees
    occluders: tuple[int, int]
    occ_size: tuple[float, float]  # / frame side
    min_visible: float


def _view_params(mode: str, rng: np.random.Generator, k: float) -> _ViewParams:
    """View distribution per image role; ``k`` (config ``difficulty``) scales the geometric/occlusion spread."""
    n_occ = max(1, round(3 * k))
    if mode == "query":
        return _ViewParams((0.6, 0.92), 0.08 * k, 0.15 * k, 4 * k, (0, 1), (0.08, 0.2), 0.75)
    if mode == "db":
        u = rng.random()
        if u < 0.45:  # ordinary views: mostly easy
            return _ViewParams(
                (0.5, 0.5 + 0.5 * k), 0.2 * k, 0.35 * k, 8 * k, (0, n_occ), (0.1, 0.1 + 0.2 * k), 0.0
            )
        if u < 0.67:  # zoomed in / off-centre: partial views (mostly hard)
            return _ViewParams((1.0, 2.4), 0.45, 0.35 * k, 8 * k, (0, n_occ), (0.1, 0.1 + 0.25 * k), 0.0)
        if u < 0.75:  # fragments (mostly junk)
            return _ViewParams((2.2, 3.5), 0.55, 0.35 * k, 8 * k, (0, n_occ), (0.1, 0.1 + 0.25 * k), 0.0)
        if u < 0.9:  # heavily occluded
            return _ViewParams((0.5, 1.1), 0.35, 0.5 * k, 12 * k, (2, 2 + n_occ), (0.2, 0.2 + 0.3 * k), 0.0)
        return _ViewParams((0.22, 0.38), 0.3, 0.3 * k, 8 * k, (0, 2), (0.1, 0.3), 0.0)  # far away (hard)
    # train, gl_index, gl_test, distractor: the landmark is clearly there but views vary
    return _ViewParams(
        (0.55, 0.55 + 0.65 * k), 0.2 * k, 0.3 * k, 6 * k, (0, n_occ), (0.1, 0.1 + 0.25 * k), 0.45
    )


def _sample_geometry(rng, lm: _Landmark, vp: _ViewParams, out: float) -> tuple[np.ndarray, bool]:
    bx0, by0, bx1, by1 = lm.bbox
    bw, bh = bx1 - bx0, by1 - by0
    s = rng.uniform(*vp.scale)
    k = s * out / max(bw, bh)
    cx = out * (0.5 + rng.uniform(-vp.offset, vp.offset))
    cy = out * (0.5 + rng.uniform(-vp.offset, vp.offset))
    th = math.radians(rng.uniform(-vp.rot, vp.rot))
    yaw = rng.uniform(-vp.yaw, vp.yaw)
    pitch = rng.uniform(-0.4, 0.4) * vp.yaw
    src = np.array([[bx0, by0], [bx1, by0], [bx1, by1], [bx0, by1]], dtype=np.float64)
    hw, hh = bw * k / 2, bh * k / 2
    # yaw: the near side grows, the far side shrinks and the width foreshortens; pitch likewise vertically
    lx, rx = -hw * (1 - abs(yaw) * 0.5), hw * (1 - abs(yaw) * 0.5)
    dst = np.array(
        [
            [lx * (1 + pitch), -hh * (1 + yaw)],
            [rx * (1 + pitch), -hh * (1 - yaw)],
            [rx * (1 - pitch), hh * (1 - yaw)],
            [lx * (1 - pitch), hh * (1 + yaw)],
        ]
    )
    dst += rng.normal(0, 0.03 * max(hw, hh), dst.shape)
    c, si = math.cos(th), math.sin(th)
    dst = dst @ np.array([[c, si], [-si, c]]) + [cx, cy]
    extreme = abs(yaw) > 0.4 or s < 0.4
    return _homography(src, dst), extreme


def _draw_clutter_item(d: ImageDraw.ImageDraw, rng, out: float, colour, y_hint: float) -> None:
    kind = rng.random()
    x = rng.uniform(-0.1, 1.1) * out
    if kind < 0.3:  # generic block building with a window grid
        w, h = rng.uniform(0.1, 0.45) * out, rng.uniform(0.1, 0.6) * out
        _rect(d, [x, y_hint - h, x + w, y_hint], fill=colour)
        win = tuple(int(v * 0.5) for v in colour)
        nx, ny = int(rng.integers(1, 5)), int(rng.integers(1, 6))
        for i in range(nx):
            for j in range(ny):
                wx = x + w * (i + 0.3) / nx
                wy = y_hint - h + h * (j + 0.3) / ny
                _rect(d, [wx, wy, wx + w * 0.35 / nx, wy + h * 0.4 / ny], fill=win)
    elif kind < 0.55:  # tree
        r = rng.uniform(0.05, 0.18) * out
        _rect(
            d,
            [x - r * 0.12, y_hint - 2.2 * r, x + r * 0.12, y_hint],
            fill=tuple(int(v * 0.6) for v in colour),
        )
        _ell(d, [x - r, y_hint - 3.2 * r, x + r, y_hint - 1.4 * r], fill=colour)
    elif kind < 0.7:  # pole / line
        d.line(
            [(x, y_hint), (x + rng.uniform(-0.2, 0.2) * out, y_hint - rng.uniform(0.2, 0.9) * out)],
            fill=colour,
            width=int(rng.integers(1, 4)),
        )
    else:  # random blob
        d.polygon(_blob(rng, x, rng.uniform(0.1, 1.0) * out, rng.uniform(0.05, 0.2) * out, 6), fill=colour)


def _rand_rgb(rng) -> tuple[int, int, int]:
    c = _colour(rng, rng.uniform(0.1, 0.95), 0.8)
    return tuple(int(v) for v in np.clip(c * 255, 0, 255))


def _background(rng, out: int, clutter: float) -> Image.Image:
    top = _colour(rng, rng.uniform(0.45, 1.0), 0.6)
    bot = _colour(rng, rng.uniform(0.35, 1.0), 0.6)
    t = np.linspace(0, 1, out)[:, None]
    sky = np.clip((top * (1 - t) + bot * t) * 255, 0, 255).astype(np.uint8)[:, None, :]
    img = Image.fromarray(sky, "RGB").resize((out, out), Image.NEAREST)
    d = ImageDraw.Draw(img)
    horizon = rng.uniform(0.6, 0.97) * out
    _rect(d, [0, horizon, out, out], fill=_rand_rgb(rng))
    for _ in range(int(rng.integers(2, 3 + round(7 * clutter)))):
        _draw_clutter_item(d, rng, out, _rand_rgb(rng), horizon + rng.uniform(-0.05, 0.1) * out)
    return img


def _occluders(rng, out: int, vp: _ViewParams) -> tuple[Image.Image, Image.Image]:
    """Foreground occluders: an RGB layer and its 0/255 mask."""
    layer = Image.new("RGB", (out, out), 0)
    mask = Image.new("L", (out, out), 0)
    dl, dm = ImageDraw.Draw(layer), ImageDraw.Draw(mask)
    for _ in range(int(rng.integers(vp.occluders[0], vp.occluders[1] + 1))):
        col = _rand_rgb(rng)
        r = rng.uniform(*vp.occ_size) * out / 2
        x = rng.uniform(0, out)
        y = rng.uniform(0.3, 1.0) * out
        kind = rng.random()
        blob = _blob(rng, x, y, r, 7) if kind >= 0.8 else None
        for d, fill in ((dl, col), (dm, 255)):
            if kind < 0.35:  # bush / tree crown
                _ell(d, [x - r, y - 0.8 * r, x + r, y + 0.8 * r], fill=fill)
            elif kind < 0.6:  # vehicle / sign / wall
                _rect(d, [x - r, y - 0.6 * r, x + r, min(out, y + 2 * r)], fill=fill)
            elif kind < 0.8:  # person-like: head + body
                _ell(d, [x - 0.2 * r, y - 1.3 * r, x + 0.2 * r, y - 0.9 * r], fill=fill)
                _rect(d, [x - 0.3 * r, y - 0.9 * r, x + 0.3 * r, y + 0.8 * r], fill=fill)
            else:
                d.polygon(blob, fill=fill)
    return layer, mask


def _render(seed: int, split: int, index: int, landmark: int, mode: str, cfg: SyntheticConfig):
    """Draw one view. Returns (JPEG bytes, visible fraction, bbx at stored size or None, extreme flag)."""
    rng = np.random.default_rng([seed, split, index])
    size = cfg.image_size
    out = size * _SS
    img = _background(rng, out, cfg.difficulty)
    visible, bbx, extreme = 0.0, None, False
    if landmark >= 0:
        lm = _landmark(seed, landmark)
        vp = _view_params(mode, rng, cfg.difficulty)
        for _ in range(30):  # rejection sampling of geometry + occluders for the role's minimum visibility
            h, extreme = _sample_geometry(rng, lm, vp, out)
            proj = _project(h, lm.points)
            inside = (proj[:, 0] >= 0) & (proj[:, 0] < out) & (proj[:, 1] >= 0) & (proj[:, 1] < out)
            occ_layer, occ_mask = _occluders(rng, out, vp)
            om = np.asarray(occ_mask)
            pi = np.clip(proj.astype(np.int64), 0, out - 1)
            vis = inside & (om[pi[:, 1], pi[:, 0]] == 0)
            visible = float(vis.mean())
            if visible >= vp.min_visible:
                break
        pal = _palette(rng, lm.lum, cfg.difficulty)
        fg = lm.pimg.copy()
        fg.putpalette(np.clip(pal * 255 + 0.5, 0, 255).astype(np.uint8).tobytes())
        fg = Image.merge("RGBA", (*fg.convert("RGB").split(), lm.alpha))  # premultiplied: material 0 is black
        hinv = np.linalg.inv(h)
        hinv /= hinv[2, 2]
        warped = fg.transform(
            (out, out), Image.Transform.PERSPECTIVE, tuple(hinv.ravel()[:8]), Image.BILINEAR
        )
        inv = ImageChops.invert(warped.getchannel("A"))
        img = ImageChops.add(
            warped.convert("RGB"), ImageChops.multiply(img, Image.merge("RGB", (inv, inv, inv)))
        )
        img.paste(occ_layer, (0, 0), occ_mask)  # premultiplied "over", then the occluders in front
        if inside.any():
            p = proj[inside] / _SS
            bbx = [
                round(float(max(0.0, p[:, 0].min())), 1),
                round(float(max(0.0, p[:, 1].min())), 1),
                round(float(min(size, p[:, 0].max())), 1),
                round(float(min(size, p[:, 1].max())), 1),
            ]
    else:  # clutter-only image: a second layer of clutter in front
        occ_layer, occ_mask = _occluders(rng, out, _ViewParams((0, 0), 0, 0, 0, (1, 4), (0.1, 0.4), 0))
        img.paste(occ_layer, (0, 0), occ_mask)
    # optics: blur, then down-sampling (2x2 box: anti-aliasing)
    k = cfg.difficulty
    if rng.random() < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0 + 1.0 * k)))
    img = img.reduce(_SS)
    # photometric: gamma, contrast around the mean, brightness, colour cast (one lookup table per channel),
    # a directional lighting gradient and sensor noise
    gamma = rng.uniform(1 - 0.3 * k, 1 + 0.4 * k)
    contrast = rng.uniform(1 - 0.35 * k, 1 + 0.25 * k)
    bright = rng.uniform(1 - 0.35 * k, 1 + 0.3 * k)
    cast = rng.uniform(1 - 0.15 * k, 1 + 0.15 * k, 3)
    lut_g = (np.arange(256) / 255.0) ** gamma
    hist = np.asarray(img.histogram(), dtype=np.float64).reshape(3, 256)
    mean = float((hist * lut_g).sum() / hist.sum())
    lut = (((lut_g[None, :] - mean) * contrast + mean * bright) * cast[:, None] * 255).astype(np.float32)
    u8 = np.asarray(img)
    a = np.stack([lut[c][u8[..., c]] for c in range(3)], axis=-1)
    g = np.linspace(-1, 1, size, dtype=np.float32)
    ang, amp = rng.uniform(0, 2 * math.pi), rng.uniform(0.0, 0.25)
    a *= (1.0 + amp * (math.cos(ang) * g[None, :] + math.sin(ang) * g[:, None]))[..., None]
    a += rng.standard_normal((size, size, 3), dtype=np.float32) * np.float32(rng.uniform(0, 6 * k))
    img = Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8), "RGB")
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=cfg.jpeg_quality, optimize=False, progressive=False, subsampling=2)
    return buf.getvalue(), visible, bbx, extreme


# ----------------------------------------------------------------------------------------------------------
# plan
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    split: int
    index: int
    landmark: int  # -1: clutter only
    mode: str
    relpath: str


def _image_id(seed: int, split: int, index: int) -> str:
    key = f"bctbench-synthetic:{seed}:{_SPLIT_NAMES[split]}:{index}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _gl_path(split_dir: str, image_id: str) -> str:
    return f"gldv2/{split_dir}/{image_id[0]}/{image_id[1]}/{image_id[2]}/{image_id}.jpg"


def _train_counts(rng: np.random.Generator, cfg: SyntheticConfig) -> np.ndarray:
    n_rest = cfg.train_classes - cfg.train_n1 - cfg.train_n2 - cfg.train_n3
    if n_rest < 0:
        raise DataError("SyntheticConfig: train_n1 + train_n2 + train_n3 exceed train_classes")
    rest = np.exp(rng.normal(math.log(cfg.train_median), cfg.train_sigma, n_rest))
    rest = np.clip(np.round(rest), 4, max(4, cfg.train_max)).astype(np.int64)
    counts = np.concatenate(
        [np.full(cfg.train_n1, 1), np.full(cfg.train_n2, 2), np.full(cfg.train_n3, 3), rest]
    )
    return counts[rng.permutation(counts.size)]


@dataclass
class _Plan:
    jobs: list[_Job]
    train_rows: list[tuple[int, list[str]]]  # (landmark_id, image ids) sorted by landmark_id
    index_ids: list[str]
    test_rows: list[tuple[str, str, str]]  # (id, images or "None", Usage) in test.csv order
    rev_db: list[tuple[str, int]]  # (name, landmark or -1) in imlist order
    rev_queries: list[tuple[str, int]]
    rev_db_jobs: list[_Job]
    rev_query_jobs: list[_Job]


def _make_plan(seed: int, cfg: SyntheticConfig) -> _Plan:
    rng = np.random.default_rng([seed, 0])
    jobs: list[_Job] = []
    next_landmark = 0

    def landmarks(n: int) -> list[int]:
        nonlocal next_landmark
        out = list(range(next_landmark, next_landmark + n))
        next_landmark += n
        return out

    # --- training landmarks (GLDv2 train_clean.csv)
    counts = _train_counts(rng, cfg)
    train_lms = landmarks(cfg.train_classes)
    landmark_ids = np.sort(rng.choice(200_000, size=cfg.train_classes, replace=False))
    lid_of = {lm: int(landmark_ids[i]) for i, lm in enumerate(rng.permutation(train_lms))}
    train_rows = []
    index = 0
    for lm, n in zip(train_lms, counts, strict=True):
        ids = []
        for _ in range(int(n)):
            iid = _image_id(seed, _TRAIN, index)
            jobs.append(_Job(_TRAIN, index, lm, "train", _gl_path("train", iid)))
            ids.append(iid)
            index += 1
        train_rows.append((lid_of[lm], ids))
    train_rows.sort()

    # --- revisited set: query landmarks, distractor landmarks, clutter
    rev_lms = landmarks(cfg.rev_landmarks)
    rev_dis = landmarks(cfg.rev_distractor_landmarks)
    db_spec = [lm for lm in rev_lms for _ in range(cfg.rev_db_per_landmark)]
    db_spec += [lm for lm in rev_dis for _ in range(cfg.rev_views_per_distractor)]
    db_spec += [-1] * cfg.rev_clutter
    db_spec = [db_spec[i] for i in rng.permutation(len(db_spec))]
    rev_db, rev_db_jobs = [], []
    for i, lm in enumerate(db_spec):
        name = f"{REVISITED_NAME}_{i:06d}"
        rev_db.append((name, lm))
        rev_db_jobs.append(_Job(_REV_DB, i, lm, "db", f"datasets/{REVISITED_NAME}/jpg/{name}.jpg"))
    rev_queries, rev_query_jobs = [], []
    for i, lm in enumerate(lm for lm in rev_lms for _ in range(cfg.rev_queries_per_landmark)):
        name = f"{REVISITED_NAME}_query_{i:03d}"
        rev_queries.append((name, lm))
        rev_query_jobs.append(_Job(_REV_QUERY, i, lm, "query", f"datasets/{REVISITED_NAME}/jpg/{name}.jpg"))
    jobs += rev_db_jobs + rev_query_jobs

    # --- GLDv2 eval: index gallery and test queries
    gl_lms = landmarks(cfg.gl_eval_landmarks)
    gl_dis = landmarks(cfg.gl_distractor_landmarks)
    index_spec = [
        lm for lm in gl_lms for _ in range(int(rng.integers(cfg.gl_index_min, cfg.gl_index_max + 1)))
    ]
    index_spec += [lm for lm in gl_dis for _ in range(cfg.gl_views_per_distractor)]
    index_spec += [-1] * cfg.gl_clutter_index
    index_of: dict[int, list[str]] = {}
    index_ids = []
    for i, lm in enumerate(index_spec):
        iid = _image_id(seed, _GL_INDEX, i)
        jobs.append(_Job(_GL_INDEX, i, lm, "gl", _gl_path("index", iid)))
        index_ids.append(iid)
        index_of.setdefault(lm, []).append(iid)
    # scored queries: views of eval landmarks; unscored: unindexed landmarks / clutter (None; mostly Ignored)
    test_spec = [(lm, True) for lm in gl_lms for _ in range(cfg.gl_queries_per_landmark)]
    unscored = landmarks(cfg.gl_unscored_test)
    test_spec += [(lm if k % 3 else -1, False) for k, lm in enumerate(unscored)]
    test_rows = []
    n_scored = sum(1 for _, s in test_spec if s)
    public = set(
        rng.choice(n_scored, size=int(round(cfg.gl_public_fraction * n_scored)), replace=False).tolist()
    )
    scored_k = unscored_k = 0
    for i, (lm, scored) in enumerate(test_spec):
        iid = _image_id(seed, _GL_TEST, i)
        jobs.append(_Job(_GL_TEST, i, lm, "gl", _gl_path("test", iid)))
        if scored:
            usage = "Public" if scored_k in public else "Private"
            scored_k += 1
            test_rows.append((iid, " ".join(sorted(index_of[lm])), usage))
        else:
            # most unscored rows are "None,Ignored"; every 4th carries Public/Private with "None" (README form)
            usage = ("Public", "Private")[(unscored_k // 4) % 2] if unscored_k % 4 == 0 else "Ignored"
            unscored_k += 1
            test_rows.append((iid, "None", usage))
    index_ids.sort()
    test_rows.sort()
    all_ids = [iid for _, ids in train_rows for iid in ids] + index_ids + [r[0] for r in test_rows]
    if len(set(all_ids)) != len(all_ids):  # 64-bit ids: practically impossible
        raise DataError(f"synthetic generator produced duplicate image ids for seed {seed}; use another seed")
    return _Plan(jobs, train_rows, index_ids, test_rows, rev_db, rev_queries, rev_db_jobs, rev_query_jobs)


# ----------------------------------------------------------------------------------------------------------
# workers
# ----------------------------------------------------------------------------------------------------------

_W: dict = {}


def _init_worker(seed: int, cfg_dict: dict, root: str) -> None:
    _W.update(seed=seed, cfg=SyntheticConfig(**cfg_dict), root=root)


def _run_chunk(chunk: Sequence[_Job]) -> list[tuple[str, str, float, list | None, bool]]:
    seed, cfg, root = _W["seed"], _W["cfg"], Path(_W["root"])
    results = []
    made: set[Path] = set()
    for job in chunk:
        data, visible, bbx, extreme = _render(seed, job.split, job.index, job.landmark, job.mode, cfg)
        path = root / job.relpath
        if path.parent not in made:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(path.parent)
        path.write_bytes(data)
        results.append((job.relpath, hashlib.sha256(data).hexdigest(), visible, bbx, extreme))
    return results


def _chunks(jobs: list[_Job], size: int) -> Iterator[list[_Job]]:
    ordered = sorted(jobs, key=lambda j: (j.landmark, j.split, j.index))  # landmark cache locality
    for i in range(0, len(ordered), size):
        yield ordered[i : i + size]


def _default_workers() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 16))


# ----------------------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------------------


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))


def _csv_text(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def _revisited_label(visible: float, extreme: bool) -> str:
    if visible < JUNK_MAX_VISIBLE:
        return "junk"
    if visible > EASY_MIN_VISIBLE and not extreme:
        return "easy"
    return "hard"


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _tree_sha256(files: dict[str, str]) -> str:
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(f"{rel} {files[rel]}\n".encode())
    return h.hexdigest()


def _generate_into(tmp: Path, seed: int, cfg: SyntheticConfig, workers: int) -> dict:
    plan = _make_plan(seed, cfg)
    results: dict[str, tuple[str, float, list | None, bool]] = {}
    chunk = max(8, min(64, len(plan.jobs) // (workers * 8) or 8))
    if workers <= 1:
        _init_worker(seed, asdict(cfg), str(tmp))
        for c in _chunks(plan.jobs, chunk):
            for rel, sha, vis, bbx, ext in _run_chunk(c):
                results[rel] = (sha, vis, bbx, ext)
    else:
        # fork where available (as torch's DataLoader does): workers only use NumPy/PIL, and spawn would
        # re-import the caller's __main__ (scripts without a main guard would recurse)
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with ctx.Pool(workers, initializer=_init_worker, initargs=(seed, asdict(cfg), str(tmp))) as pool:
            for res in pool.imap_unordered(_run_chunk, _chunks(plan.jobs, chunk)):
                for rel, sha, vis, bbx, ext in res:
                    results[rel] = (sha, vis, bbx, ext)
    files = {rel: r[0] for rel, r in results.items()}

    def put(rel: str, data: bytes) -> None:
        path = tmp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        files[rel] = hashlib.sha256(data).hexdigest()

    # GLDv2 CSVs
    put(
        "gldv2/train_clean.csv",
        _csv_text(
            ("landmark_id", "images"), [(str(lid), " ".join(ids)) for lid, ids in plan.train_rows]
        ).encode(),
    )
    put("gldv2/index.csv", _csv_text(("id",), [(i,) for i in plan.index_ids]).encode())
    put("gldv2/test.csv", _csv_text(("id",), [(r[0],) for r in plan.test_rows]).encode())
    put("gldv2/retrieval_solution_v2.1.csv", _csv_text(("id", "images", "Usage"), plan.test_rows).encode())

    # revisited ground truth
    labels = [
        (lm, _revisited_label(results[j.relpath][1], results[j.relpath][3]))
        for j, (_, lm) in zip(plan.rev_db_jobs, plan.rev_db, strict=True)
    ]
    gnd = []
    for job, (_, lm) in zip(plan.rev_query_jobs, plan.rev_queries, strict=True):
        entry: dict = {
            "bbx": results[job.relpath][2] or [0.0, 0.0, float(cfg.image_size), float(cfg.image_size)]
        }
        for key in ("easy", "hard", "junk"):
            entry[key] = [i for i, (dl, lab) in enumerate(labels) if dl == lm and lab == key]
        gnd.append(entry)
    pkl = {"imlist": [n for n, _ in plan.rev_db], "qimlist": [n for n, _ in plan.rev_queries], "gnd": gnd}
    put(f"datasets/{REVISITED_NAME}/gnd_{REVISITED_NAME}.pkl", pickle.dumps(pkl, protocol=4))

    n_scored = sum(1 for r in plan.test_rows if r[1] != "None")
    counts = {
        "train_classes": len(plan.train_rows),
        "train_images": sum(len(ids) for _, ids in plan.train_rows),
        "train_classes_n1": sum(1 for _, ids in plan.train_rows if len(ids) == 1),
        "train_classes_n2_3": sum(1 for _, ids in plan.train_rows if len(ids) in (2, 3)),
        "train_classes_n4plus": sum(1 for _, ids in plan.train_rows if len(ids) >= 4),
        "gldv2_index": len(plan.index_ids),
        "gldv2_test": len(plan.test_rows),
        "gldv2_scored_public": sum(1 for r in plan.test_rows if r[1] != "None" and r[2] == "Public"),
        "gldv2_scored_private": sum(1 for r in plan.test_rows if r[1] != "None" and r[2] == "Private"),
        "gldv2_unscored": len(plan.test_rows) - n_scored,
        "rsynth_db": len(plan.rev_db),
        "rsynth_queries": len(plan.rev_queries),
        "rsynth_easy": sum(len(g["easy"]) for g in gnd),
        "rsynth_hard": sum(len(g["hard"]) for g in gnd),
        "rsynth_junk": sum(len(g["junk"]) for g in gnd),
        "files": len(files) + 1,
    }
    manifest = {
        "generator": "bctbench.synthetic",
        "version": GENERATOR_VERSION,
        "seed": seed,
        "config": asdict(cfg),
        "counts": counts,
        "tree_sha256": _tree_sha256(files),
        "files": dict(sorted(files.items())),
    }
    text = json.dumps(manifest, indent=1, sort_keys=True) + "\n"
    part = tmp / (MANIFEST + ".part")
    part.write_bytes(text.encode("utf-8"))
    os.replace(part, tmp / MANIFEST)  # written last, atomically
    return manifest


def make_synthetic(
    data_root: str | os.PathLike,
    *,
    name: str = "synth",
    seed: int = 0,
    config: SyntheticConfig | None = None,
    workers: int | None = None,
    force: bool = False,
) -> Path:
    """Generate the synthetic dataset under ``<data_root>/<name>/`` and return that path.

    Skips the work when a manifest with the same generator version, seed and config is present (unless
    ``force``). The tree is built in a hidden sibling directory and swapped in when complete, so readers never
    see a half-written dataset.
    """
    cfg = config if config is not None else SyntheticConfig()
    root = Path(data_root).expanduser()
    dest = root / name
    if not force and _manifest_matches(dest, seed, cfg):
        return dest
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(root, name)
    n_workers = _default_workers() if workers is None else max(1, int(workers))
    tmp = root / f".{name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        _generate_into(tmp, seed, cfg, n_workers)
        old = root / f".{name}.old-{os.getpid()}"
        if dest.exists():
            os.replace(dest, old)
        os.replace(tmp, dest)
        if old.exists():
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: the process exists
        return True
    return True


def _remove_stale_partials(root: Path, name: str) -> None:
    """Remove ``.<name>.partial-<pid>`` / ``.<name>.old-<pid>`` folders left by killed generator runs."""
    for p in root.glob(f".{name}.*-*"):
        kind, _, pid = p.name[len(name) + 2 :].rpartition("-")
        if p.is_dir() and kind in ("partial", "old") and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def _read_manifest(path: Path) -> dict | None:
    try:
        return json.loads((path / MANIFEST).read_text("utf-8"))
    except (OSError, ValueError):
        return None


def _manifest_matches(path: Path, seed: int, cfg: SyntheticConfig) -> bool:
    m = _read_manifest(path)
    return (
        m is not None
        and m.get("version") == GENERATOR_VERSION
        and m.get("seed") == seed
        and m.get("config") == asdict(cfg)
    )


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - non-POSIX: no cross-process lock
            yield
            return
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_synthetic(
    data_root: str | os.PathLike,
    name: str = "synth",
    seed: int = 0,
    *,
    config: SyntheticConfig | None = None,
    workers: int | None = None,
    verify: bool = False,
) -> Path:
    """Return ``<data_root>/<name>``, generating it first if its manifest is missing or differs in generator
    version, seed or config. Concurrent callers are serialised by a lock file beside the dataset."""
    cfg = config if config is not None else SyntheticConfig()
    root = Path(data_root).expanduser()
    dest = root / name
    if not _manifest_matches(dest, seed, cfg):
        with _lock(root / f".{name}.lock"):
            if not _manifest_matches(dest, seed, cfg):
                make_synthetic(root, name=name, seed=seed, config=cfg, workers=workers, force=True)
    if verify:
        verify_synthetic(dest)
    return dest


def verify_synthetic(path: str | os.PathLike) -> dict:
    """Re-hash every file listed in the manifest; raise :class:`DataError` naming the first bad file."""
    path = Path(path)
    m = _read_manifest(path)
    if m is None:
        raise DataError(f"synthetic dataset {path}: {MANIFEST} is missing or unreadable; regenerate it")
    files = m.get("files")
    if not isinstance(files, dict) or _tree_sha256(files) != m.get("tree_sha256"):
        raise DataError(f"synthetic dataset {path}: {MANIFEST} is inconsistent (tree_sha256); regenerate it")
    for rel in sorted(files):
        f = path / rel
        if not f.is_file():
            raise DataError(f"synthetic dataset {path}: missing file {rel}; regenerate with force=True")
        if _sha256_file(f) != files[rel]:
            raise DataError(
                f"synthetic dataset {path}: {rel} does not match its manifest sha256; "
                "regenerate with force=True"
            )
    return m
