"""Entry point of ``bctbench leaderboard``: read reference and user results, gate them for comparability,
build the table and render it (and its figures)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from bctbench.comparability import gate
from bctbench.errors import BCTBenchError, ConfigError
from bctbench.identity import atomic_write_bytes
from bctbench.leaderboard.formats import _RENDERERS
from bctbench.leaderboard.plots import plot_leaderboard
from bctbench.leaderboard.readings import readings_markdown, spec_or_none
from bctbench.leaderboard.sequential import _SEQ_RENDERERS, is_sequential, sequential_leaderboard
from bctbench.leaderboard.table import leaderboard, results_frame
from bctbench.results import read_results


def load_board(
    results_root: str | os.PathLike | None,
    benchmark: str,
    reference_root: str | os.PathLike | None = None,
    *,
    strict: bool = False,
):
    """Read the reference results and the user's results of ``benchmark`` and pass them through the
    provenance gate (:func:`bctbench.comparability.gate`). The same folder given twice counts once."""
    same = (
        results_root is not None
        and reference_root is not None
        and Path(results_root).resolve() == Path(reference_root).resolve()
    )
    if reference_root is None:  # one folder: its results are the board, unmarked
        return gate(read_results(results_root, benchmark) if results_root is not None else [], strict=strict)
    reference = read_results(reference_root, benchmark)
    yours = read_results(results_root, benchmark) if results_root is not None and not same else []
    return gate(reference, yours, strict=strict)


def render(
    results_root: str | os.PathLike | None,
    benchmark: str,
    fmt: str = "md",
    out: str | os.PathLike | None = None,
    plots_dir: str | os.PathLike | None = None,
    curve_methods: Iterable[str] | None = None,
    *,
    reference_root: str | os.PathLike | None = None,
    strict: bool = False,
) -> str:
    """Build the leaderboard of ``benchmark`` from result files alone and return it as text.

    ``results_root``: the user's results (rows marked ``(yours)`` when ``reference_root`` is given too);
    ``reference_root``: the reference results. Both go through the provenance gate; results that are not
    comparable are listed under the table (``strict``: refused with a one-line error instead).
    ``fmt``: ``md`` (alias ``markdown``), ``csv`` or ``latex`` (alias ``tex``). ``out``: also write the text
    there. ``plots_dir``: also write the figures there, PDF and PNG (``curve_methods``: see :func:`plot_leaderboard`).
    Results of a sequential benchmark (they carry ``curves["sequential"]``) get the sequential view instead
    (:func:`sequential_leaderboard`; ``md`` or ``csv``, no plots). Raises
    :class:`~bctbench.errors.ConfigError` for an unknown format and :class:`~bctbench.errors.BCTBenchError`
    when the benchmark has no readable results.
    """
    text, _, _ = _build(results_root, benchmark, fmt, plots_dir, curve_methods, reference_root, strict)
    if out is not None:
        atomic_write_bytes(out, text.encode("utf-8"))  # a reader never sees half a board
    return text


def publish(
    results_root: str | os.PathLike | None,
    benchmark: str,
    wandb_dir: str | os.PathLike,
    plots_dir: str | os.PathLike | None = None,
    curve_methods: Iterable[str] | None = None,
    *,
    reference_root: str | os.PathLike | None = None,
    strict: bool = False,
) -> tuple[str, str | None, Path | None]:
    """Build the leaderboard as :func:`render` does (Markdown, figures into ``plots_dir``) and publish it to
    W&B (:func:`bctbench.tracking.publish_leaderboard`: a table with one row per method, the figures, the
    Markdown). Returns ``(markdown, W&B run id, local run folder)``; the ids are None when W&B is disabled or
    failed (a warning says why)."""
    from bctbench import tracking
    from bctbench.leaderboard.dashboard import board_table

    text, lb, figures = _build(
        results_root, benchmark, "md", plots_dir, curve_methods, reference_root, strict
    )
    table = board_table(lb) if "seeds" in lb.columns and "origin" in lb.columns else lb
    run_id, folder = tracking.publish_leaderboard(benchmark, table, figures, text, save_dir=wandb_dir)
    return text, run_id, folder


def _build(results_root, benchmark, fmt, plots_dir, curve_methods, reference_root, strict):
    """``(text, leaderboard frame, figure paths)`` of one benchmark's board."""
    renderer = _RENDERERS.get(fmt)
    if renderer is None:
        raise ConfigError(f"unknown leaderboard format '{fmt}'; valid: {', '.join(sorted(_RENDERERS))}")
    board = load_board(results_root, benchmark, reference_root, strict=strict)
    results = [e.result for e in board.entries]
    if not results:
        where = " or ".join(str(Path(r)) for r in (results_root, reference_root) if r is not None)
        raise BCTBenchError(f"no readable, comparable results for benchmark '{benchmark}' under {where}")
    if is_sequential(results):
        text, lb = _render_sequential(board, fmt)
        return text, lb, []
    df = results_frame(results, keys=[e.row for e in board.entries])
    if not (df["kind"] == "metric").any():
        raise BCTBenchError(f"no readable results for benchmark '{benchmark}'")
    lb = leaderboard(board.entries, apart=board.apart, code_versions=board.code_versions)
    text = renderer(lb)
    if fmt in ("md", "markdown"):
        extra = readings_markdown(lb, results, spec_or_none(benchmark))
        text += f"\n{extra}" if extra else ""
    figures = (
        plot_leaderboard(df, plots_dir, lb, curve_methods=curve_methods) if plots_dir is not None else []
    )
    return text, lb, list(figures)


def _render_sequential(board, fmt: str):
    renderer = _SEQ_RENDERERS.get(fmt)
    if renderer is None:
        raise ConfigError(
            f"format '{fmt}' is not available for sequential benchmarks; valid: {', '.join(sorted(_SEQ_RENDERERS))}"
        )
    lb = sequential_leaderboard(board.entries)
    text = renderer(lb)
    if fmt in ("md", "markdown") and board.apart:
        text += "\nShown apart, not averaged:\n" + "".join(f"- {reason}\n" for reason in board.apart)
    return text, lb
