"""Readings across the rows of one board, printed under the Markdown leaderboard: your runs against the
reference runs of the same seed, what tuning changed, how the suite's ordering compares with a published one,
and what the board cost to compute.

All four are functions of the leaderboard frame (:func:`bctbench.leaderboard.table.leaderboard`) and the
result files alone."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd

from bctbench.leaderboard.formats import _finite
from bctbench.leaderboard.table import VS_DEFAULT
from bctbench.published import ADVBCT_P1, ADVBCT_ROWS, advbct_block
from bctbench.results import RunResult
from bctbench.statistics import RankAgreement, rank_agreement

__all__ = [
    "compute_cost",
    "paper_agreement",
    "preset_changes",
    "readings_markdown",
    "spec_or_none",
    "your_runs",
]


def _tier(x: Any) -> str:
    return str(int(x)) if _finite(x) else "–"


def your_runs(lb: pd.DataFrame, results: Iterable[RunResult] = ()) -> pd.DataFrame:
    """One row per (your row, seed) that the reference row of the same label also has: ``row``, ``seed``,
    ``old model`` (first 12 hex digits of the seed's old-model identity, from ``results``; the provenance gate
    admits a run only when it matches the reference run of that seed), ``P_1`` (yours), ``reference P_1`` and
    ``ΔP_1`` (yours − reference), from the per-seed P_1 in ``lb.attrs``. Empty without such pairs."""
    per_seed = lb.attrs.get("p1_per_seed") or {}
    identity = {(r.label, r.seed): r.old_identity for r in results}
    rows = []
    for key in lb.loc[lb["origin"] == "yours", "key"] if "origin" in lb.columns else []:
        ref_key = str(key).removesuffix(" (yours)")
        mine, ref = per_seed.get(key) or {}, per_seed.get(ref_key) or {}
        for seed in sorted(set(mine) & set(ref)):
            rows.append(
                {
                    "row": key,
                    "seed": seed,
                    "old model": str(identity.get((ref_key, seed)) or "?")[:12],
                    "P_1": mine[seed],
                    "reference P_1": ref[seed],
                    "ΔP_1": mine[seed] - ref[seed],
                }
            )
    return pd.DataFrame(rows)


def preset_changes(lb: pd.DataFrame) -> pd.DataFrame:
    """One row per preset row of the reference board (``method:<preset>``, other hyperparameters): its method's
    default P_1 and tier, its own, and the paired P_1 difference over their common seeds (``ΔP_1``, 95 % CI,
    ✓/≈/✗), sorted by method then preset. Empty when the board has no such pair."""
    if VS_DEFAULT not in lb.columns:
        return pd.DataFrame()
    by_key = lb.set_index("key")
    rows = []
    for _, r in lb.iterrows():
        if not _finite(r.get(VS_DEFAULT)) or r.get("origin") != "reference":
            continue
        base = by_key.loc[r["default row"]]
        rows.append(
            {
                "method": r["name"],
                "row": r["key"],
                "default P_1": base["P_1"],
                "default n": base["P_1 n"],
                "default tier": base["tier"],
                "P_1": r["P_1"],
                "n": r["P_1 n"],
                "tier": r["tier"],
                "ΔP_1": r[VS_DEFAULT],
                "ΔP_1 low": r[f"{VS_DEFAULT} low"],
                "ΔP_1 high": r[f"{VS_DEFAULT} high"],
                "paired seeds": r[f"{VS_DEFAULT} seeds"],
                "verdict": r[f"{VS_DEFAULT} verdict"],
            }
        )
    return pd.DataFrame(rows).sort_values(["method", "row"], ignore_index=True) if rows else pd.DataFrame()


def paper_agreement(lb: pd.DataFrame, spec: Any, *, seed: int = 0) -> list[tuple[str, RankAgreement, dict]]:
    """Kendall τ_b between the AdvBCT table's P_1 ordering (the block matching ``spec``) and this board's, for
    up to two readings: the rows that run the paper's variants at its hyperparameters, and the tuned rows
    (``method:tuned``). Each comes with ``{method: (row, suite P_1, paper P_1)}``. Empty when no block
    matches or fewer than three of the paper's methods are on the board."""
    block = advbct_block(spec) if spec is not None else None
    if block is None:
        return []
    published = ADVBCT_P1[block]
    per_seed = lb.attrs.get("p1_per_seed") or {}
    boots = lb.attrs.get("p1_boot_per_seed") or {}
    means = dict(zip(lb["key"], lb["P_1"], strict=True)) if "P_1" in lb.columns else {}
    out = []
    for reading, rows in (
        ("paper's variants and hyperparameters", ADVBCT_ROWS),
        ("tuned presets", {m: f"{m}:tuned" for m in published}),
    ):
        present = {m: row for m, row in rows.items() if row in per_seed and per_seed[row]}
        if len(present) < 3:
            continue
        agreement = rank_agreement(
            {m: per_seed[row] for m, row in present.items()},
            published,
            {m: boots.get(row) or {} for m, row in present.items()},
            seed=seed,
        )
        detail = {m: (row, means.get(row, math.nan), published[m]) for m, row in present.items()}
        out.append((f"{block}: {reading}", agreement, detail))
    return out


def compute_cost(results: Iterable[RunResult]) -> dict[str, Any]:
    """Compute spent on a board's runs, from their recorded stage timings: ``runs``, ``core_hours`` (each
    stage's wall seconds × the run's torch threads; GPU runs count their CPU threads the same way),
    ``runs_per_core_hour``, ``stage_hours`` (per stage, core-hours) and ``machines`` (distinct CPU models)."""
    runs, core_s, stages, machines = 0, 0.0, {}, set()
    for r in results:
        runs += 1
        threads = max(1, int((r.env or {}).get("torch_threads") or 1))
        machines.add(str((r.env or {}).get("cpu_model") or "?"))
        for stage, seconds in (r.timings or {}).items():
            if _finite(seconds):
                core_s += float(seconds) * threads
                stages[stage] = stages.get(stage, 0.0) + float(seconds) * threads / 3600
    hours = core_s / 3600
    return {
        "runs": runs,
        "core_hours": hours,
        "runs_per_core_hour": runs / hours if hours > 0 else math.nan,
        "stage_hours": stages,
        "machines": sorted(machines),
    }


def _preset_lines(lb: pd.DataFrame) -> list[str]:
    table = preset_changes(lb)
    if table.empty:
        return []
    lines = [
        "### Presets against the defaults",
        "",
        "| method | row | default P_1 (n) | tier | preset P_1 (n) | tier | ΔP_1 [95 % CI] | |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for _, r in table.iterrows():
        ci = f"[{r['ΔP_1 low']:+.2f}, {r['ΔP_1 high']:+.2f}]" if _finite(r["ΔP_1 low"]) else "[–]"
        lines.append(
            f"| {r['method']} | {r['row']} | {r['default P_1']:.2f} ({int(r['default n'])}) | "
            f"{_tier(r['default tier'])} | {r['P_1']:.2f} ({int(r['n'])}) | {_tier(r['tier'])} | "
            f"{r['ΔP_1']:+.2f} {ci} | {r['verdict']} |"
        )
    lines += [
        "",
        "ΔP_1: preset minus default, paired over the seeds both rows have (same old model per seed), seed and "
        "test-set error as in the main table; ✓ / ✗ the preset is significantly better / worse, ≈ neither. "
        "Tiers are the main table's.",
        "",
    ]
    return lines


def _yours_lines(lb: pd.DataFrame, results: Sequence[RunResult]) -> list[str]:
    table = your_runs(lb, results)
    if table.empty:
        return []
    lines = [
        "### Your runs against the reference runs of the same seed",
        "",
        "| row | seed | old model | P_1 | reference P_1 | ΔP_1 |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for _, r in table.iterrows():
        lines.append(
            f"| {r['row']} | {r['seed']} | {r['old model']} | {r['P_1']:.2f} | {r['reference P_1']:.2f} "
            f"| {r['ΔP_1']:+.2f} |"
        )
    lines += [
        "",
        "Same seed, same pinned old model (a run with another old-model identity is listed apart, not here); "
        "ΔP_1 +0.00: the re-run reproduced that seed's reference P_1 (other CPUs or thread counts may differ "
        "slightly).",
        "",
    ]
    return lines


def _paper_lines(lb: pd.DataFrame, spec: Any) -> list[str]:
    readings = paper_agreement(lb, spec)
    if not readings:
        return []
    lines = ["### Against the AdvBCT table (P_1 ordering)", ""]
    for title, a, detail in readings:
        order = sorted(detail, key=lambda m: -detail[m][1] if _finite(detail[m][1]) else math.inf)
        paper = sorted(detail, key=lambda m: -detail[m][2])
        lines += [
            f"- **{title}**: Kendall τ_b = {a.tau:+.2f}, 95 % interval [{a.low:+.2f}, {a.high:+.2f}] over "
            f"{a.n_boot} rounds resampling the {a.n_seeds} seeds"
            + (" and the test set" if a.with_test else "")
            + f"; P(τ_b > 0) = {a.p_positive:.2f}; exact permutation p (τ_b this large by chance, "
            f"{a.n_methods} methods) = {a.p:.3f}.",
            f"  Suite: {' > '.join(f'{m} {detail[m][1]:.2f}' for m in order)}; "
            f"paper: {' > '.join(f'{m} {detail[m][2]:.2f}' for m in paper)}.",
        ]
    lines += [""]
    return lines


def _cost_lines(results: Sequence[RunResult]) -> list[str]:
    cost = compute_cost(results)
    if not cost["runs"]:
        return []
    stages = ", ".join(f"{k} {v:.2f}" for k, v in sorted(cost["stage_hours"].items(), key=lambda kv: -kv[1]))
    return [
        "### Compute",
        "",
        f"{cost['runs']} runs, {cost['core_hours']:.2f} core-hours ({cost['runs_per_core_hour']:.1f} runs per "
        f"core-hour; by stage: {stages}) on {', '.join(cost['machines'])} — recorded stage timings × threads, "
        "without process start-up.",
        "",
    ]


def readings_markdown(lb: pd.DataFrame, results: Sequence[RunResult], spec: Any = None) -> str:
    """The readings under the Markdown board: your runs against the reference runs of the same seed, presets
    vs defaults, the AdvBCT ordering (when ``spec`` matches a block of its table), compute. Empty string when
    none applies."""
    lines = [*_yours_lines(lb, results), *_preset_lines(lb), *_paper_lines(lb, spec), *_cost_lines(results)]
    return "\n".join(lines) + "\n" if lines else ""


def spec_or_none(benchmark: str) -> Any:
    """The shipped spec of ``benchmark``, or None (a board of results whose spec is not installed)."""
    from bctbench.config import load_benchmark
    from bctbench.errors import BCTBenchError

    try:
        return load_benchmark(benchmark)
    except BCTBenchError:
        return None
