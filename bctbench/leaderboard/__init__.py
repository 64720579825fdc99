"""Leaderboard: a pure function of result files, gated for comparability and stated with honest uncertainty.

Stages, one module each: ``table`` (results → frame → one row per run label and origin with 95 % CIs,
paired ✓/≈/✗ verdicts, P-metrics, AUCs, tiers) → ``formats`` (Markdown/CSV/LaTeX table) and ``plots`` (PDF +
PNG figures, drawn with the fixed method colours and markers of ``style`` and the non-overlapping point
labels of ``labels``);
``sequential`` (AC/AA board of upgrade chains); ``render`` (what ``bctbench leaderboard`` calls: read,
gate with :func:`bctbench.comparability.gate`, build, render)."""

from bctbench.leaderboard.formats import legend, to_csv, to_latex, to_markdown
from bctbench.leaderboard.plots import leaderboard_figures, plot_leaderboard
from bctbench.leaderboard.render import load_board, render
from bctbench.leaderboard.sequential import is_sequential, sequential_leaderboard, sequential_to_markdown
from bctbench.leaderboard.table import FRAME_COLUMNS, leaderboard, load_results, results_frame, value_column

__all__ = [
    "FRAME_COLUMNS",
    "is_sequential",
    "leaderboard",
    "leaderboard_figures",
    "legend",
    "load_board",
    "load_results",
    "plot_leaderboard",
    "render",
    "results_frame",
    "sequential_leaderboard",
    "sequential_to_markdown",
    "to_csv",
    "to_latex",
    "to_markdown",
    "value_column",
]
