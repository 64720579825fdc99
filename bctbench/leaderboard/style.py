"""One fixed colour and marker per method, used by every leaderboard figure.

Built-in methods (``methods/*.py``) have a fixed :class:`Style` in :data:`METHOD_STYLES`: eleven colours from
the colour-blind-safe Okabe–Ito and Paul Tol palettes (chosen so that every pair stays ≥ 10 ΔE*ab apart under
simulated protanopia and deuteranopia too) plus grey for the paragon ``independent`` (φ*), each with its own
marker, so a method is told apart by marker alone in greyscale. ``old→old`` is always the black dashed line of
:data:`REFERENCE_STYLE`. Any other method (a third-party plugin) gets a colour and marker derived from its name
with SHA-256 (the same in every figure and process) and kept ≥ :data:`MIN_DELTA_E` from the fixed colours.
A row ``<label> (yours)`` keeps its label's style and is drawn hollow; ``<method>@<digest>`` (non-default
hyperparameters) keeps the method's colour with a marker from the digest.
"""

from __future__ import annotations

import colorsys
import hashlib
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Style:
    """How one figure row is drawn: ``color`` (``#RRGGBB``), ``marker`` (matplotlib code), ``hollow``
    (white-filled markers: the user's own rows)."""

    color: str
    marker: str
    hollow: bool = False

    @property
    def face(self) -> str:
        """Marker face colour: white when hollow, else the colour."""
        return "white" if self.hollow else self.color


METHOD_STYLES: dict[str, Style] = {
    "bct": Style("#0077BB", "o"),  # Tol vibrant blue
    "advbct": Style("#CC3311", "s"),  # Tol vibrant red
    "lce": Style("#E69F00", "^"),  # Okabe–Ito orange
    "unibct": Style("#009E73", "D"),  # Okabe–Ito bluish green
    "contra": Style("#AA4499", "v"),  # Tol muted purple
    "hot_refresh": Style("#882255", "P"),  # Tol muted wine
    "l2": Style("#999933", "X"),  # Tol muted olive
    "ndpp": Style("#33BBEE", "<"),  # Tol vibrant cyan
    "odpp": Style("#663333", ">"),  # Tol dark red (brown)
    "online_backfill": Style("#CC79A7", "h"),  # Okabe–Ito reddish purple
    "triplet": Style("#228833", "p"),  # Tol bright green
    "independent": Style("#777777", "*"),  # paragon φ*: neutral grey
}
"""Fixed styles of the built-in methods (registry name → style)."""

REFERENCE_COLOR = "#000000"
"""``old→old``: black."""

REFERENCE_STYLE = {"color": REFERENCE_COLOR, "ls": "--", "lw": 1.0}
"""Line keywords of the ``old→old`` reference in every figure."""

MIN_DELTA_E = 12.0
"""Smallest CIE76 ΔE*ab between a derived colour and any fixed one (black included)."""

_EXTRA_MARKERS = ("d", "H", "8", "o", "s", "^", "v", "D", "<", ">", "p", "h", "P", "X")
"""Markers of derived styles (filled, so that hollow rows stay readable)."""

SINGLE_COLUMN_IN = 3.3
"""Width of a single-column figure (inches)."""

DOUBLE_COLUMN_IN = 7.0
"""Width of a double-column figure (inches)."""

FONT_PT = 8.0
"""Font size of every label, tick and legend at the saved size (titles: +1)."""

RC = {
    "font.size": FONT_PT,
    "axes.titlesize": FONT_PT + 1,
    "axes.labelsize": FONT_PT,
    "xtick.labelsize": FONT_PT,
    "ytick.labelsize": FONT_PT,
    "legend.fontsize": FONT_PT,
    "legend.title_fontsize": FONT_PT,
    "figure.titlesize": FONT_PT + 1,
    "axes.linewidth": 0.6,
    "lines.linewidth": 1.2,
    "lines.markersize": 4.5,
    "errorbar.capsize": 2.0,
    "pdf.fonttype": 42,  # embed TrueType: text stays text in the PDF
    "ps.fonttype": 42,
    "savefig.dpi": 300,
}
"""Matplotlib settings of every leaderboard figure (used as ``matplotlib.rc_context(RC)``)."""


def _srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """``float[..., 3]`` sRGB in 0–1 → CIE L*a*b* (D65) ``float[..., 3]``."""
    rgb = np.asarray(rgb, dtype=np.float64)
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = lin @ m.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def hex_to_rgb(color: str) -> np.ndarray:
    """``#RRGGBB`` → ``float[3]`` in 0–1."""
    return np.array([int(color[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.float64) / 255


def delta_e(a: str, b: str) -> float:
    """CIE76 colour difference ΔE*ab of two ``#RRGGBB`` colours (≈ 2.3: just noticeable)."""
    return float(np.linalg.norm(_srgb_to_lab(hex_to_rgb(a)) - _srgb_to_lab(hex_to_rgb(b))))


_FIXED_LAB = _srgb_to_lab(np.stack([hex_to_rgb(s.color) for s in METHOD_STYLES.values()] + [np.zeros(3)]))


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def derived_color(name: str) -> str:
    """A colour for a method without a fixed style: hue from SHA-256 of ``name``, stepped by the golden ratio
    (and three lightness levels) until it is ≥ :data:`MIN_DELTA_E` from every fixed colour."""
    h = (_digest(name) % 10_000) / 10_000
    for k in range(64):
        hue = (h + 0.618033988749895 * k) % 1.0
        light = (0.42, 0.32, 0.55)[k % 3]
        rgb = np.array(colorsys.hls_to_rgb(hue, light, 0.75))
        if np.linalg.norm(_FIXED_LAB - _srgb_to_lab(rgb), axis=1).min() >= MIN_DELTA_E:
            break
    return "#" + "".join(f"{round(c * 255):02X}" for c in rgb)


def method_style(label: str) -> Style:
    """The style of a leaderboard row or curve label (``key``): fixed for a built-in method, derived from the
    name otherwise; ``(yours)`` rows hollow."""
    hollow = label.endswith(" (yours)")
    name = label.removesuffix(" (yours)")
    base, sep, digest = name.partition("@")
    if not sep:  # a preset row ``method:<preset>``
        base, _, digest = name.partition(":")
    fixed = METHOD_STYLES.get(name)
    if fixed is not None:
        return Style(fixed.color, fixed.marker, hollow)
    if (
        base in METHOD_STYLES and digest
    ):  # a hyperparameter or preset variant: the method's colour, own marker
        return Style(METHOD_STYLES[base].color, _EXTRA_MARKERS[_digest(digest) % 3], hollow)
    return Style(derived_color(name), _EXTRA_MARKERS[_digest(name) % len(_EXTRA_MARKERS)], hollow)
