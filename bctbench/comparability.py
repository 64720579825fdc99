"""The provenance gate: which results may share a leaderboard, and which must be shown apart.

A leaderboard cell averages results over seeds; that is only meaningful when the results agree on everything
but the seed and the method's training randomness. :func:`gate` takes the reference results and the user's
results of one benchmark and admits a result only when it agrees with the board's anchor on

* ``benchmark_sha256`` (the spec), ``eval_variants.dataset_sha256`` (the data's bytes), ``split_sha256``;
* ``old_identity`` — the content identity of **its seed's** old model (seed k of every method must have been
  trained and evaluated against old model k);
* within one row (method and hyperparameter digest), identical ``method_hparams``.

The anchor is the most common value among the reference results (among all results when there are none).
Every other result is *apart*: it is listed under the table with a one-line reason naming its file, the
field and the file it was compared with (``strict=True`` raises that line instead). Nothing is ever averaged
across a difference. Differing code versions (git commits) among the admitted results are reported.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from bctbench.errors import ConfigError
from bctbench.identity import short
from bctbench.results import RunResult

REFERENCE, YOURS = "reference", "yours"
GATE_FIELDS = ("benchmark_sha256", "dataset_sha256", "split_sha256")

__all__ = ["GATE_FIELDS", "REFERENCE", "YOURS", "Entry", "GateReport", "gate"]


@dataclass(frozen=True)
class Entry:
    """One result on the board and where it came from (``"reference"`` or ``"yours"``)."""

    result: RunResult
    origin: str = REFERENCE

    @property
    def row(self) -> str:
        """Row key: the run label (``method`` or ``method@digest``), marked when it is the user's."""
        return self.result.label if self.origin == REFERENCE else f"{self.result.label} (yours)"


@dataclass
class GateReport:
    """Admitted entries, reasons for the results shown apart, and the code versions on the board."""

    entries: list[Entry] = field(default_factory=list)
    apart: list[str] = field(default_factory=list)
    code_versions: list[str] = field(default_factory=list)


def _field(res: RunResult, name: str) -> str | None:
    return res.eval_variants.get(name) if name == "dataset_sha256" else getattr(res, name)


def _anchor(pool: Sequence[RunResult], key) -> tuple[object, RunResult] | None:
    """Most common value of ``key`` in ``pool`` (ties: the value of the first file) and a file that holds it."""
    if not pool:
        return None
    counts = Counter(key(r) for r in pool)
    best = max(counts.values())
    for r in pool:  # pool is sorted: the first file with a most common value
        if counts[key(r)] == best:
            return key(r), r
    return None  # pragma: no cover


def _name(res: RunResult) -> str:
    return str(res.source or f"{res.label}/seed{res.seed}")


def _show(value: object) -> str:
    return short(value) if isinstance(value, str) else repr(value)


def gate(
    reference: Iterable[RunResult], yours: Iterable[RunResult] = (), *, strict: bool = False
) -> GateReport:
    """Admit the comparable results (see the module docstring); raise :class:`ConfigError` if ``strict`` and
    anything is apart."""
    entries = [Entry(r, REFERENCE) for r in reference] + [Entry(r, YOURS) for r in yours]
    ref_pool = [e.result for e in entries if e.origin == REFERENCE] or [e.result for e in entries]
    report = GateReport()
    anchors = {f: _anchor(ref_pool, lambda r, f=f: _field(r, f)) for f in GATE_FIELDS}
    old_anchor = {
        seed: _anchor([r for r in ref_pool if r.seed == seed], lambda r: r.old_identity)
        for seed in sorted({e.result.seed for e in entries})
    }
    rows: dict[str, RunResult] = {}
    for e in entries:
        r = e.result
        reason = None
        for f in GATE_FIELDS:
            value, other = anchors[f]
            if _field(r, f) != value:
                reason = f"{_name(r)}: {f} {_show(_field(r, f))} differs from {_name(other)} ({_show(value)})"
                break
        if reason is None and old_anchor.get(r.seed) is not None:
            value, other = old_anchor[r.seed]
            if r.old_identity != value:
                reason = (
                    f"{_name(r)}: old_identity {_show(r.old_identity)} differs from {_name(other)} "
                    f"({_show(value)}), the old model of seed {r.seed}"
                )
        if reason is None:
            first = rows.setdefault(e.row, r)
            if first.method_hparams != r.method_hparams:
                reason = f"{_name(r)}: method_hparams differ from {_name(first)} (same row {e.row})"
        if reason is not None:
            if strict:
                raise ConfigError(f"not comparable: {reason}")
            report.apart.append(reason)
            continue
        report.entries.append(e)
    versions = Counter(
        f"{str(e.result.git.get('sha') or 'unknown')[:10]}{'+dirty' if e.result.git.get('dirty') else ''}"
        for e in report.entries
    )
    report.code_versions = [f"{v} ({n} results)" for v, n in sorted(versions.items())]
    return report
