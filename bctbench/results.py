"""Run results: the source of truth for every reported number.

One run (benchmark x method x hyperparameters x seed) writes one JSON file,
``<results root>/<benchmark>/<label>/seed<k>.json``, holding a :class:`RunResult`; ``label`` is the method name,
or ``<method>@<digest>`` when some hyperparameters differ from the method's defaults (``digest``: 8 hex of the
non-default values), so variants never overwrite each other. The file is written atomically *before* anything is
sent to W&B; the leaderboard is rebuilt from these files alone (never from logs).

Provenance that makes two results comparable: ``benchmark_sha256`` (the spec), ``eval_variants.dataset_sha256``,
``split_sha256``, ``old_identity`` (content identity of the seed's old model) and ``hparams_digest``.
``per_query`` keeps, per eval set, the primary metric of every query for every model pair and a landmark group
per query, so the leaderboard can bootstrap the test-set error from results alone.

Metric rows are tidy dicts, values are raw fractions in [0, 1] (rounded only when rendered)::

    {"eval_set": "rsynth", "protocol": "medium", "query_model": "new", "gallery_model": "old",
     "metric": "mAP", "value": 0.4312}

``query_model -> gallery_model``: the query is embedded by ``query_model`` and the gallery by ``gallery_model``
(``new -> old`` is the cross-test). Backfilling curves live in ``curves["backfill"]`` as a list of dicts with
keys ``eval_set, protocol, metric, mode, order, order_seed, fractions, values, auc`` (+ optional ``nfr``).

Sequential benchmarks (``sequential_steps`` = T > 1) name the models by generation: rows ``query_model = "g{i}"``,
``gallery_model = "g{j}"`` for every ``i >= j`` (``g0`` is the seed's pinned old model; the diagonal holds the
self-tests), and ``curves["sequential"]`` holds ``steps`` (T), ``generations`` (per generation: checkpoint
``sha256`` and ``path``; for ``g1`` on also ``old_sha256``, the frozen predecessor's parameter digest before and
after training, ``new_digest`` and ``hparams``) and ``matrices`` (per eval set, protocol and metric: ``matrix``
T x T with null above the diagonal, ``AC``, ``AA``; :mod:`bctbench.evaluation.sequential`).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from bctbench.errors import BCTBenchError

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1: archived results (file sha256 as old identity)
DEFAULT_HPARAMS = "default"
ROW_KEYS = ("eval_set", "protocol", "query_model", "gallery_model", "metric", "value")
CURVE_KEYS = ("eval_set", "protocol", "metric", "mode", "order", "fractions", "values")

__all__ = [
    "SCHEMA_VERSION",
    "ResultFileError",
    "RunResult",
    "collect_provenance",
    "hparams_digest",
    "machine_info",
    "metric_key",
    "metrics_frame",
    "read_result",
    "read_results",
    "run_label",
    "result_path",
    "write_result",
]


class ResultFileError(BCTBenchError):
    """A result JSON file is unreadable or does not follow the RunResult schema."""


def metric_key(row: Mapping[str, Any], split: str = "test") -> str:
    """Return the metric key of a tidy row: ``{split}/{eval_set}/{protocol}/{query}-{gallery}/{metric}``."""
    return f"{split}/{row['eval_set']}/{row['protocol']}/{row['query_model']}-{row['gallery_model']}/{row['metric']}"


def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


@dataclass
class RunResult:
    """Everything one run reports, plus the provenance needed to audit it (JSON-serialisable).

    ``primary`` maps each eval set to its leaderboard ``[protocol, metric]`` (e.g. ``{"rsynth": ["medium",
    "mAP"], "gldv2": ["private", "mAP@100"]}``) so that consumers never hard-code dataset names. ``flags``
    lists non-default fidelity flags / variant markers (e.g. ``"advbct_compat"``); the leaderboard marks them.
    ``timings`` holds seconds (e.g. ``{"fit": 12.3, "test": 4.5}``).
    """

    benchmark: str
    method: str
    seed: int
    metrics: list[dict[str, Any]] = field(default_factory=list)
    curves: dict[str, Any] = field(default_factory=dict)
    primary: dict[str, list[str]] = field(default_factory=dict)
    method_hparams: dict[str, Any] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    benchmark_sha256: str | None = None
    old_identity: str | None = None
    split_sha256: str | None = None
    hparams_digest: str = DEFAULT_HPARAMS
    per_query: dict[str, Any] = field(default_factory=dict)
    git: dict[str, Any] = field(default_factory=dict)
    env: dict[str, Any] = field(default_factory=dict)
    eval_variants: dict[str, Any] = field(default_factory=dict)
    wandb_run: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    resumed: bool = False
    #: the named hyperparameter preset the run used (``tuned``, a method's paper variant), None for ``--set``
    preset: str | None = None
    created_at: str = field(default_factory=_now_iso)
    schema_version: int = SCHEMA_VERSION
    #: the file this result was read from (not serialised)
    source: str | None = field(default=None, compare=False, repr=False)

    @property
    def label(self) -> str:
        """Folder and row name: ``method:<preset>`` for a preset run, else ``method`` for default
        hyperparameters and ``method@<hparams digest>`` for others."""
        return run_label(self.method, self.hparams_digest, self.preset)

    # ------------------------------------------------------------------ conversion
    def to_dict(self) -> dict[str, Any]:
        """Return a plain JSON-ready dict (field order = declaration order, ``schema_version`` first)."""
        d = dataclasses.asdict(self)
        d.pop("source")
        if d.get("preset") is None:
            d.pop("preset", None)  # absent = no preset (files stay readable by earlier schema-2 readers)
        return {"schema_version": d.pop("schema_version"), **d}

    def to_json(self) -> str:
        """Serialise to JSON (2-space indent, NaN written as ``null``)."""
        return json.dumps(_nan_to_none(self.to_dict()), indent=2, allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str | os.PathLike = "<dict>") -> RunResult:
        """Validate ``data`` against schema version 1 and build a RunResult.

        Raises :class:`ResultFileError` with a one-line message naming ``source`` and the offending key.
        """
        src = str(source)

        def bad(key: str, why: str) -> ResultFileError:
            return ResultFileError(f"{src}: invalid result key '{key}': {why}")

        if not isinstance(data, Mapping):
            raise bad("<root>", f"expected a JSON object, got {type(data).__name__}")
        version = data.get("schema_version")
        if version not in READABLE_VERSIONS:
            raise bad("schema_version", f"expected one of {READABLE_VERSIONS}, got {version!r}")
        if version == 1:  # archived: the file sha256 of the old checkpoint stood for its identity
            data = {k: v for k, v in data.items() if k != "old_checkpoint_sha256"} | {
                "schema_version": SCHEMA_VERSION,
                "old_identity": (
                    f"file-sha256:{data['old_checkpoint_sha256']}"
                    if data.get("old_checkpoint_sha256")
                    else None
                ),
            }

        known = {f.name for f in dataclasses.fields(cls)} - {"source"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise bad(unknown[0], "unknown key")

        for key in ("benchmark", "method"):
            if not isinstance(data.get(key), str) or not data.get(key):
                raise bad(key, "missing or not a non-empty string")
        seed = data.get("seed")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise bad("seed", f"missing or not an integer ({seed!r})")

        typed: dict[str, tuple[type | tuple[type, ...], bool]] = {
            # key: (types, nullable)
            "metrics": (list, False),
            "curves": (dict, False),
            "primary": (dict, False),
            "method_hparams": (dict, False),
            "flags": (list, False),
            "benchmark_sha256": (str, True),
            "old_identity": (str, True),
            "split_sha256": (str, True),
            "hparams_digest": (str, False),
            "per_query": (dict, False),
            "git": (dict, False),
            "env": (dict, False),
            "eval_variants": (dict, False),
            "wandb_run": (str, True),
            "preset": (str, True),
            "timings": (dict, False),
            "resumed": (bool, False),
            "created_at": (str, False),
        }
        for key, (types, nullable) in typed.items():
            if key not in data:
                continue
            value = data[key]
            if value is None and nullable:
                continue
            if not isinstance(value, types):
                raise bad(key, f"expected {getattr(types, '__name__', types)}, got {type(value).__name__}")

        for i, row in enumerate(data.get("metrics", [])):
            if not isinstance(row, Mapping):
                raise bad(f"metrics[{i}]", "not an object")
            for k in ROW_KEYS:
                if k not in row:
                    raise bad(f"metrics[{i}].{k}", "missing")
            for k in ROW_KEYS[:-1]:
                if not isinstance(row[k], str):
                    raise bad(f"metrics[{i}].{k}", "not a string")
            if row["value"] is not None and (
                not isinstance(row["value"], int | float) or isinstance(row["value"], bool)
            ):
                raise bad(f"metrics[{i}].value", f"not a number ({row['value']!r})")

        for i, curve in enumerate(data.get("curves", {}).get("backfill", []) or []):
            if not isinstance(curve, Mapping):
                raise bad(f"curves.backfill[{i}]", "not an object")
            for k in CURVE_KEYS:
                if k not in curve:
                    raise bad(f"curves.backfill[{i}].{k}", "missing")
            if len(curve["fractions"]) != len(curve["values"]):
                raise bad(f"curves.backfill[{i}].values", "length differs from fractions")

        for es, pm in data.get("primary", {}).items():
            if not (isinstance(pm, list | tuple) and len(pm) == 2 and all(isinstance(x, str) for x in pm)):
                raise bad(f"primary.{es}", f"expected [protocol, metric], got {pm!r}")

        for i, flag in enumerate(data.get("flags", [])):
            if not isinstance(flag, str):
                raise bad(f"flags[{i}]", "not a string")

        kwargs = {k: data[k] for k in known if k in data}
        kwargs["metrics"] = [
            {**row, "value": math.nan if row["value"] is None else float(row["value"])}
            for row in kwargs.get("metrics", [])
        ]
        kwargs["primary"] = {es: list(pm) for es, pm in kwargs.get("primary", {}).items()}
        return cls(**kwargs, source=src)

    # ------------------------------------------------------------------ helpers
    def primary_of(self, eval_set: str) -> tuple[str, str] | None:
        """Return the primary ``(protocol, metric)`` of ``eval_set`` or None."""
        pm = self.primary.get(eval_set)
        return (pm[0], pm[1]) if pm else None

    def value(self, eval_set: str, protocol: str, query: str, gallery: str, metric: str) -> float:
        """Return one metric value (NaN when absent)."""
        for row in self.metrics:
            if (
                row["eval_set"],
                row["protocol"],
                row["query_model"],
                row["gallery_model"],
                row["metric"],
            ) == (
                eval_set,
                protocol,
                query,
                gallery,
                metric,
            ):
                return float(row["value"])
        return math.nan


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_nan_to_none(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return _nan_to_none(obj.item())
    return obj


# ---------------------------------------------------------------------- provenance
def _git_info(cwd: str | os.PathLike | None = None) -> dict[str, Any]:
    """``{"sha", "dirty"}`` of the checkout holding the code; changes under ``results/`` do not count."""
    cwd = cwd or Path(__file__).resolve().parent

    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True)
        return out.stdout.strip()

    try:
        sha = git("rev-parse", "HEAD")
    except (OSError, subprocess.SubprocessError):
        return {"sha": None, "dirty": None}
    try:
        # result files are outputs, not code: writing them must not make the next run of a queue "dirty"
        top = git("rev-parse", "--show-toplevel")
        dirty: bool | None = bool(
            git("-C", top, "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results")
        )
    except (OSError, subprocess.SubprocessError):
        dirty = None
    return {"sha": sha, "dirty": dirty}


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def machine_info() -> dict[str, Any]:
    """``{"cpu_model", "cpu_count", "torch_threads"}`` of this process (threads read from torch if loaded)."""
    torch = sys.modules.get("torch")
    return {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads() if torch is not None else None,
    }


def collect_provenance(cwd: str | os.PathLike | None = None) -> dict[str, Any]:
    """Return ``{"git": {sha, dirty}, "env": {python, torch, torchvision, pillow, lightning, timm, faiss, numpy,
    cuda, platform, cpu_model, cpu_count, torch_threads}}``.

    Never raises: without git (or outside a repository) ``sha`` and ``dirty`` are None; missing libraries give
    None versions. ``cuda`` is torch's CUDA build version (None for CPU builds). Libraries are not imported
    (versions come from package metadata), except torch when it is already imported, for ``cuda``.
    """
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": _version("torch"),
        "torchvision": _version("torchvision"),
        "pillow": _version("pillow"),
        "lightning": _version("lightning"),
        "timm": _version("timm"),
        "faiss": _version("faiss-cpu") or _version("faiss-gpu") or _version("faiss"),
        "numpy": _version("numpy"),
        "cuda": None,
        "platform": platform.platform(),
    }
    torch = sys.modules.get("torch")
    if torch is None and env["torch"] is not None:
        try:
            import torch  # noqa: PLC0415 (optional, heavy)
        except Exception:  # pragma: no cover - broken torch install
            torch = None
    if torch is not None:
        env["cuda"] = getattr(getattr(torch, "version", None), "cuda", None)
    env.update(machine_info())
    return {"git": _git_info(cwd), "env": env}


# ---------------------------------------------------------------------- I/O
def hparams_digest(non_default: Mapping[str, Any]) -> str:
    """``"default"`` for no non-default hyperparameters, else 8 hex of their canonical JSON."""
    if not non_default:
        return DEFAULT_HPARAMS
    blob = json.dumps(dict(non_default), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def run_label(method: str, digest: str = DEFAULT_HPARAMS, preset: str | None = None) -> str:
    """Folder / row name of a run: ``method:<preset>`` for a named preset, else ``method``, or
    ``method@digest`` for non-default hyperparameters."""
    if preset:
        return f"{method}:{preset}"
    return method if digest == DEFAULT_HPARAMS else f"{method}@{digest}"


def result_path(
    results_root: str | os.PathLike,
    benchmark: str,
    method: str,
    seed: int,
    digest: str = DEFAULT_HPARAMS,
    preset: str | None = None,
) -> Path:
    """Return ``results_root/<benchmark>/<label>/seed<seed>.json`` (:func:`run_label`)."""
    return Path(results_root) / benchmark / run_label(method, digest, preset) / f"seed{int(seed)}.json"


def write_result(result: RunResult, results_root: str | os.PathLike) -> Path:
    """Write ``result`` atomically to :func:`result_path` and return the path.

    The JSON goes to a temporary file in the target folder, is flushed and fsynced, then ``os.replace``-d onto
    the target: readers see either the previous file or the complete new one, never a partial file. On any
    failure the temporary file is removed and the previous target is left untouched.
    """
    from bctbench.identity import atomic_write_bytes

    path = result_path(
        results_root, result.benchmark, result.method, result.seed, result.hparams_digest, result.preset
    )
    atomic_write_bytes(path, result.to_json().encode("utf-8"))
    try:  # persist the rename itself (POSIX); harmless where directories cannot be opened
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path


def read_result(path: str | os.PathLike) -> RunResult:
    """Read and validate one result file; raise :class:`ResultFileError` (one line, names file and key)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ResultFileError(f"{path}: cannot read result file: {exc.strerror or exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ResultFileError(
            f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from exc
    return RunResult.from_dict(data, source=path)


def read_results(results_root: str | os.PathLike, benchmark: str | None = None) -> list[RunResult]:
    """Read every ``<benchmark>/<method>/seed*.json`` under ``results_root`` (one benchmark or all).

    Unreadable or invalid files are skipped with a :class:`UserWarning`; this never raises for bad files. A
    missing root yields an empty list. Results are sorted by (benchmark, method, seed).
    """
    root = Path(results_root)
    pattern = f"{benchmark}/*/seed*.json" if benchmark else "*/*/seed*.json"
    out: list[RunResult] = []
    if not root.is_dir():
        return out
    for path in sorted(root.glob(pattern)):
        try:
            res = read_result(path)
        except BCTBenchError as exc:
            warnings.warn(f"skipping result file: {exc}", UserWarning, stacklevel=2)
            continue
        except Exception as exc:  # noqa: BLE001 - never crash on a bad file
            warnings.warn(
                f"skipping result file: {path}: {type(exc).__name__}: {exc}", UserWarning, stacklevel=2
            )
            continue
        if benchmark is not None and res.benchmark != benchmark:
            warnings.warn(
                f"skipping result file: {path}: benchmark '{res.benchmark}' does not match folder '{benchmark}'",
                UserWarning,
                stacklevel=2,
            )
            continue
        out.append(res)
    out.sort(key=lambda r: (r.benchmark, r.method, r.hparams_digest, r.seed))
    return out


METRICS_COLUMNS = (
    "benchmark",
    "method",
    "seed",
    "flags",
    "eval_set",
    "protocol",
    "query_model",
    "gallery_model",
    "metric",
    "value",
    "key",
    "is_primary",
)


def metrics_frame(results: Iterable[RunResult]) -> pd.DataFrame:
    """One row per metric row of every result.

    Columns: ``benchmark, method, seed, flags`` (sorted flags joined by ``","``, ``""`` if none), the tidy row
    keys ``eval_set, protocol, query_model, gallery_model, metric, value`` (fraction), ``key`` (metric key) and
    ``is_primary`` (this row's (protocol, metric) is the primary pair of its eval set).
    """
    rows: list[dict[str, Any]] = []
    for res in results:
        flags = ",".join(sorted(set(res.flags)))
        for row in res.metrics:
            pm = res.primary_of(row["eval_set"])
            rows.append(
                {
                    "benchmark": res.benchmark,
                    "method": res.method,
                    "seed": int(res.seed),
                    "flags": flags,
                    **{k: row[k] for k in ROW_KEYS},
                    "key": metric_key(row),
                    "is_primary": pm is not None and (row["protocol"], row["metric"]) == pm,
                }
            )
    df = pd.DataFrame(rows, columns=list(METRICS_COLUMNS))
    return df.astype({"seed": "int64", "value": "float64", "is_primary": "bool"})
