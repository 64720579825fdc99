"""Direct point labels that never overlap: a deterministic greedy placement on rings of candidate positions.

Each label is tried at 16 directions × growing distances around its point (nearest first, upper right
preferred); the first candidate box that stays inside the axes and clears every label placed before it and
every point's marker wins (crossing an error bar only costs). Every label gets a thin leader line to its
marker, so none is read as another point's. Boxes come from the renderer's text extents, so the axes layout must be final before placing (the
callers freeze the layout engine first)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

LABEL_GID = "point-label"
"""``gid`` of the label texts (tests find them by it)."""

_ANGLES = np.deg2rad(
    np.array([45, 135, -45, -135, 90, -90, 0, 180, 22.5, 67.5, 112.5, 157.5, -22.5, -67.5, -112.5, -157.5])
)


def _overlap(boxes: np.ndarray, others: np.ndarray) -> np.ndarray:
    """``bool[C]``: does candidate box c (``[C, 4]``: x0, y0, x1, y1) intersect any of ``others`` ``[M, 4]``."""
    if len(others) == 0:
        return np.zeros(len(boxes), dtype=bool)
    b, o = boxes[:, None, :], others[None, :, :]
    hit = (
        (b[..., 0] < o[..., 2]) & (o[..., 0] < b[..., 2]) & (b[..., 1] < o[..., 3]) & (o[..., 1] < b[..., 3])
    )
    return hit.any(axis=1)


def _crossings(boxes: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """``float[C]``: how many axis-aligned ``segments`` (``[S, 4]`` boxes of zero width or height) each box
    crosses."""
    if len(segments) == 0:
        return np.zeros(len(boxes))
    b, s = boxes[:, None, :], segments[None, :, :]
    hit = (
        (b[..., 0] <= s[..., 2])
        & (s[..., 0] <= b[..., 2])
        & (b[..., 1] <= s[..., 3])
        & (s[..., 1] <= b[..., 3])
    )
    return hit.sum(axis=1).astype(float)


def place_labels(
    ax: Any,
    xy: np.ndarray,
    texts: Sequence[str],
    *,
    segments: np.ndarray | None = None,
    marker_pt: float = 7.0,
    pad_pt: float = 1.5,
    fontsize: float = 8.0,
) -> list[Any]:
    """Label the points ``xy`` (``float[N, 2]``, data coordinates) of ``ax`` with ``texts`` without overlap.

    ``segments``: ``float[S, 4]`` error-bar segments in data coordinates (x0, y0, x1, y1), avoided where
    possible; ``marker_pt``: marker size (points) kept clear around every point; ``pad_pt``: gap (points)
    kept around every label. Returns the text artists (``gid`` :data:`LABEL_GID`) in input order; a label
    with no free place goes where it overlaps fewest labels and markers while staying inside the axes (it
    leaves them only when no candidate fits inside at all).
    """
    from matplotlib.transforms import offset_copy

    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    px = fig.dpi / 72.0  # pixels per point
    pad, half_marker = pad_pt * px, marker_pt * px / 2
    data = np.asarray(xy, dtype=float).reshape(-1, 2)  # [N, 2] data coordinates
    pts = ax.transData.transform(data)  # [N, 2] display px
    frame = ax.get_window_extent(renderer)
    markers = np.concatenate([pts - half_marker, pts + half_marker], axis=1)  # [N, 4]
    segs = np.zeros((0, 4))
    if segments is not None and len(segments):
        seg = np.asarray(segments, dtype=float)
        a, b = ax.transData.transform(seg[:, :2]), ax.transData.transform(seg[:, 2:])
        segs = np.concatenate([np.minimum(a, b), np.maximum(a, b)], axis=1)

    radii = px * np.array([3.0, 6, 10, 15, 21, 28, 36, 45, 55, 66, 78, 91, 105, 120])  # gap to the point (px)
    rr, aa = np.meshgrid(radii, _ANGLES, indexing="ij")
    rr, aa = rr.ravel(), aa.ravel()  # candidates, nearest ring first
    unit = np.stack([np.cos(aa), np.sin(aa)], axis=1)  # [C, 2]
    side = np.where(np.abs(unit) < 1e-9, 0.0, np.sign(unit))  # which side of the point the box lies on

    placed = np.zeros((0, 4))
    out = []
    backdrop = {"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.75}  # legible over bars
    for i, text in enumerate(texts):
        art = ax.text(*data[i], text, fontsize=fontsize, ha="center", va="center", gid=LABEL_GID, zorder=5)
        art.set_bbox(backdrop)
        ext = art.get_window_extent(renderer)
        size = np.array([ext.width, ext.height]) + 2 * pad
        # box centre: the box's nearest corner or side sits rr + half a marker away in direction unit
        centre = pts[i] + unit * (rr[:, None] + half_marker) + side * size / 2
        boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
        inside = (
            (boxes[:, 0] >= frame.x0)
            & (boxes[:, 1] >= frame.y0)
            & (boxes[:, 2] <= frame.x1)
            & (boxes[:, 3] <= frame.y1)
        )
        clear = inside & ~_overlap(boxes, placed) & ~_overlap(boxes, markers)
        cost = rr + 4 * px * _crossings(boxes, segs)  # a crossed error bar costs like 4 pt more distance
        if clear.any():
            c = int(np.argmin(np.where(clear, cost, np.inf)))
        else:  # nowhere free: the least overlapped candidate inside the axes (outside only if none fits)
            bad = _overlap(boxes, placed).astype(int) + _overlap(boxes, markers) + 4 * ~inside
            c = int(np.lexsort((cost, bad))[0])
        placed = np.vstack([placed, boxes[c]])
        offset_pt = (centre[c] - pts[i]) / px
        art.set_transform(offset_copy(ax.transData, fig=fig, x=offset_pt[0], y=offset_pt[1], units="points"))
        # a thin leader line from the text's nearest point to the marker: no label is ambiguous
        edge = np.clip(pts[i], boxes[c, :2] + pad, boxes[c, 2:] - pad)  # nearest point of the text
        ax.annotate(
            "",
            xy=tuple(data[i]),
            xytext=tuple((edge - pts[i]) / px),
            textcoords="offset points",
            arrowprops={
                "arrowstyle": "-",
                "lw": 0.5,
                "color": "0.45",
                "shrinkA": 0,
                "shrinkB": half_marker / px,
            },
            zorder=4,
        )
        out.append(art)
    return out
