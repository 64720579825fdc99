"""Weights & Biases as a sink: it mirrors results, it never decides them and never fails a run.

* Mode (:func:`wandb_mode`): an explicit ``WANDB_MODE`` wins (``disabled`` in tests/CI); otherwise ``online``
  when an API key is configured (``WANDB_API_KEY`` or a netrc entry for the W&B host), else ``offline`` (local
  run files under ``<save_dir>/wandb/offline-run-*``, uploadable later with ``wandb sync``).
* Naming: project ``bctbench``; a method run is named ``<label>/seed<k>`` (label = method, or
  ``method@<hparams digest>`` for non-default hyperparameters), ``group=<benchmark>``, ``job_type=<method>``,
  tags ``[method, benchmark, hp-<digest>]``. The old model of seed k is a run of its own (``job_type``
  ``old-model``, artefact ``old-model-<benchmark>-seed<k>``); method runs declare it as their input when online
  (offline, W&B cannot record an input artefact: the config names it). ``bctbench leaderboard --wandb``
  publishes the board as a run of ``job_type`` ``leaderboard``.
* Every W&B call is wrapped: an exception becomes a :class:`UserWarning` and a ``None`` return value.
* The :class:`~bctbench.results.RunResult` JSON is written *before* anything is sent here; W&B only receives
  copies (summary, tidy table, the JSON file as an artefact, leaderboard table, plots).
"""

from __future__ import annotations

import math
import netrc
import os
import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

from bctbench.errors import describe
from bctbench.results import RunResult, metric_key

PROJECT = "bctbench"
INIT_TIMEOUT_S = 20.0
T = TypeVar("T")
DEFAULT_HOST = "api.wandb.ai"
_MODES = {
    "online": "online",
    "offline": "offline",
    "disabled": "disabled",
    "dryrun": "offline",
    "run": "online",
}

__all__ = [
    "INIT_TIMEOUT_S",
    "PROJECT",
    "backfill_series",
    "digest_tag",
    "log_old_model",
    "log_run_result",
    "make_wandb_logger",
    "old_model_artifact_name",
    "publish_leaderboard",
    "run_name",
    "summary_from_result",
    "wandb_mode",
]


def run_name(label: str, seed: int, suffix: str = "") -> str:
    """Return the W&B run name ``<label>/seed<k>`` (+ ``/<suffix>``, e.g. ``g1`` for a generation of a
    sequential run)."""
    return f"{label}/seed{int(seed)}" + (f"/{suffix}" if suffix else "")


def digest_tag(digest: str) -> str:
    """The tag naming a hyperparameter setting: ``hp-<first 8 hex digits of the digest>``."""
    return f"hp-{str(digest)[:8]}"


def old_model_artifact_name(benchmark: str, seed: int) -> str:
    """``old-model-<benchmark>-seed<k>``: the W&B artefact holding old model k of a benchmark."""
    return _artifact_safe(f"old-model-{benchmark}-seed{int(seed)}")


def _artifact_safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _api_key_configured() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    hosts = {DEFAULT_HOST}
    base_url = os.environ.get("WANDB_BASE_URL")
    if base_url:
        host = urlparse(base_url).hostname
        if host:
            hosts.add(host)
    netrc_path = os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        auth = netrc.netrc(netrc_path)
    except (OSError, netrc.NetrcParseError):
        return False
    for host in hosts:
        entry = auth.authenticators(host)
        if entry and entry[2]:
            return True
    return False


def wandb_mode() -> str:
    """Return ``"online"``, ``"offline"`` or ``"disabled"``.

    An explicit ``WANDB_MODE`` is respected (``dryrun`` counts as offline); otherwise ``online`` iff an API key
    is configured (``WANDB_API_KEY``, or a ``~/.netrc`` / ``$NETRC`` entry for ``api.wandb.ai`` or the host of
    ``$WANDB_BASE_URL``), else ``offline``.
    """
    explicit = os.environ.get("WANDB_MODE", "").strip().lower()
    if explicit:
        if explicit in _MODES:
            return _MODES[explicit]
        warnings.warn(f"ignoring unknown WANDB_MODE={explicit!r}", UserWarning, stacklevel=2)
    if os.environ.get("WANDB_DISABLED", "").strip().lower() in {"1", "true", "yes"}:
        return "disabled"
    return "online" if _api_key_configured() else "offline"


def _settings(wandb: Any, **kwargs: Any) -> Any:
    """``wandb.Settings(**kwargs)``, dropping keys this wandb version does not know."""
    kw = dict(kwargs)
    while True:
        try:
            return wandb.Settings(**kw)
        except Exception:  # noqa: BLE001 - unknown field in this version
            if not kw:
                raise
            kw.popitem()


def _warn(what: str, exc: BaseException) -> None:
    warnings.warn(f"W&B {what} failed ({describe(exc)}); continuing without it", UserWarning, stacklevel=3)


def _with_run(
    what: str,
    save_dir: str | os.PathLike,
    init: Mapping[str, Any],
    body: Callable[[Any, Any], T],
    *,
    reuse_active: bool = False,
) -> T | None:
    """Run ``body(wandb, run)`` in a W&B run and finish the run in every case; return what ``body`` returns, or
    None with a warning naming ``what`` when anything fails (W&B must never fail a run or a command).

    ``init``: keyword arguments of ``wandb.init`` besides project, folder (``<save_dir>/wandb/``), mode and
    settings. ``reuse_active``: log into ``wandb.run`` when one is active (e.g. the training logger's)."""
    run = None
    try:
        import wandb

        run = wandb.run if reuse_active else None
        if run is None:
            Path(save_dir).mkdir(parents=True, exist_ok=True)
            run = wandb.init(
                project=PROJECT,
                dir=os.fspath(save_dir),
                mode=wandb_mode(),
                settings=_settings(wandb, init_timeout=INIT_TIMEOUT_S, console="off"),
                **init,
            )
        out = body(wandb, run)
    except Exception as exc:  # noqa: BLE001 - W&B must never fail a run
        _warn(what, exc)
        out = None
    finally:
        if run is not None:
            try:
                run.finish()
            except Exception as exc:  # noqa: BLE001
                _warn("finish", exc)
                out = None
    return out


def make_wandb_logger(
    method: str,
    benchmark: str,
    seed: int,
    config: Mapping[str, Any] | None,
    save_dir: str | os.PathLike,
    enabled: bool = True,
    suffix: str = "",
    *,
    label: str | None = None,
    hparams_digest: str | None = None,
    old_model: tuple[str | os.PathLike, str] | None = None,
    job_type: str | None = None,
) -> Any:
    """Return a started ``lightning.pytorch.loggers.WandbLogger`` for one training run, or None.

    ``suffix`` names one training job of a multi-job run (``g1``, ``g2``: generations of a sequential run).
    ``label`` (default: ``method``) names the run, ``hparams_digest`` adds its tag, ``old_model`` =
    ``(path, identity)`` of the old model this run trains against: declared as the run's input artefact
    when online, named in the config (``old_model_artifact``) in every mode. ``job_type`` defaults to the
    method's name (``tune`` for tuning trials).

    None when ``enabled`` is false, the mode is ``disabled``, or anything fails (then with a warning). The W&B
    run is started here (``logger.experiment``) so that a failure surfaces now, not inside ``Trainer.fit``, and
    so that its id (``logger.version``) is known before the RunResult is written. Run files go to
    ``<save_dir>/wandb/``.
    """
    if not enabled:
        return None
    try:
        mode = wandb_mode()
        if mode == "disabled":
            return None
        import wandb
        from lightning.pytorch.loggers import WandbLogger

        Path(save_dir).mkdir(parents=True, exist_ok=True)
        config = dict(config or {})
        if old_model is not None:
            config["old_model_artifact"] = f"{old_model_artifact_name(benchmark, seed)}:{old_model[1]}"
        tags = [method, benchmark] + ([digest_tag(hparams_digest)] if hparams_digest else [])
        logger = WandbLogger(
            name=run_name(label or method, seed, suffix),
            save_dir=os.fspath(save_dir),
            project=PROJECT,
            group=benchmark,
            tags=tags + ([suffix] if suffix else []),
            job_type=job_type or method,
            config=config,
            mode=mode,
            settings=_settings(wandb, init_timeout=INIT_TIMEOUT_S),
        )
        run = logger.experiment  # start now (rank zero only; other ranks get a dummy)
        if old_model is not None and mode == "online" and hasattr(run, "use_artifact"):
            run.use_artifact(_old_model_artifact(wandb, benchmark, seed, *old_model))
        return logger
    except Exception as exc:  # noqa: BLE001 - W&B must never fail a run
        _warn("logger setup", exc)
        return None


def _old_model_artifact(wandb: Any, benchmark: str, seed: int, path: str | os.PathLike, identity: str) -> Any:
    artifact = wandb.Artifact(
        name=old_model_artifact_name(benchmark, seed),
        type="old-model",
        metadata={"benchmark": benchmark, "seed": int(seed), "identity": identity},
    )
    artifact.add_file(os.fspath(path), name=Path(path).name)
    return artifact


def log_old_model(
    benchmark: str, seed: int, path: str | os.PathLike, identity: str, save_dir: str | os.PathLike
) -> str | None:
    """Log old model ``seed`` of ``benchmark`` as a W&B run of its own (``job_type="old-model"``, named
    ``old-model/seed<k>``) with the checkpoint as artefact ``old-model-<benchmark>-seed<k>`` (alias: the first
    12 hex digits of its identity). Once per identity and mode: a marker under ``<save_dir>/old-models/``
    records it. Returns the W&B run id, or None (disabled, already logged, or failed with a warning)."""
    mode = wandb_mode()
    if mode == "disabled":
        return None
    marker = Path(save_dir) / "old-models" / f"{mode}-{_artifact_safe(benchmark)}-seed{int(seed)}-{identity}"
    if marker.exists():
        return None

    def body(wandb: Any, run: Any) -> str:
        alias = identity.split(":")[-1][:12]
        run.log_artifact(
            _old_model_artifact(wandb, benchmark, seed, path, identity), aliases=["latest", alias]
        )
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(str(run.id) + "\n")
        return str(run.id)

    init = {
        "name": run_name("old-model", seed),
        "group": benchmark,
        "tags": ["old-model", benchmark],
        "job_type": "old-model",
        "config": {"benchmark": benchmark, "seed": int(seed), "identity": identity},
    }
    return _with_run("old-model upload", save_dir, init, body)


def finish_logger(logger: Any) -> None:
    """Finish the W&B run of a training logger (so that the next training job starts its own run); never
    raises."""
    try:
        logger.experiment.finish()
    except Exception as exc:  # noqa: BLE001 - W&B must never fail a run
        _warn("finish", exc)


def summary_from_result(result: RunResult) -> dict[str, float]:
    """Summary values of a run: every primary-protocol/metric row keyed by its metric key, plus backfill AUCs.

    AUC keys: ``test/{eval_set}/{protocol}/backfill-{mode}-{order}/{metric}_auc`` (mean over order seeds);
    sequential results add ``test/{eval_set}/{protocol}/sequential-{AC|AA}/{metric}``.
    """
    out: dict[str, float] = {}
    for row in result.metrics:
        if result.primary_of(row["eval_set"]) == (row["protocol"], row["metric"]):
            out[metric_key(row)] = float(row["value"])
    for mat in (result.curves.get("sequential") or {}).get("matrices", []) or []:
        if result.primary_of(mat["eval_set"]) == (mat["protocol"], mat["metric"]):
            for name in ("AC", "AA"):
                out[f"test/{mat['eval_set']}/{mat['protocol']}/sequential-{name}/{mat['metric']}"] = _plain(
                    mat.get(name)
                )
    aucs: dict[str, list[float]] = {}
    for curve in result.curves.get("backfill", []) or []:
        if result.primary_of(curve["eval_set"]) != (curve["protocol"], curve["metric"]):
            continue
        auc = curve.get("auc")
        if auc is None:
            continue
        key = f"test/{curve['eval_set']}/{curve['protocol']}/backfill-{curve['mode']}-{curve['order']}/"
        aucs.setdefault(f"{key}{curve['metric']}_auc", []).append(float(auc))
    for key, vals in aucs.items():
        out[key] = sum(vals) / len(vals)
    return out


def _plain(value: Any) -> Any:
    if value is None:
        return None
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _table(wandb: Any, frame: Any) -> Any:
    cols = [str(c) for c in frame.columns]
    data = [[_plain(v) for v in row] for row in frame.itertuples(index=False, name=None)]
    return wandb.Table(columns=cols, data=data)


def backfill_series(result: RunResult) -> dict[str, dict[str, Any]]:
    """The backfilling curves of a result as line-plot series, one plot per (eval set, protocol, metric).

    Returns ``{"backfill/<eval_set>/<protocol>/<metric>": {"xs": float[F], "ys": [float[F] per series],
    "keys": ["<mode>/<order>", ...]}}``: ``xs`` = fraction of the gallery backfilled (0–1), each series the mean
    over that order's seeds (random orders are drawn several times), metric values as fractions."""
    groups: dict[tuple[str, str, str], dict[str, list[list[float]]]] = {}
    fractions: dict[tuple[str, str, str], list[float]] = {}
    for curve in result.curves.get("backfill", []) or []:
        key = (curve["eval_set"], curve["protocol"], curve["metric"])
        xs = [float(x) for x in curve.get("fractions", [])]
        ys = [float(y) for y in curve.get("values", [])]
        if not xs or len(xs) != len(ys):
            continue
        if fractions.setdefault(key, xs) != xs:
            continue  # another fraction grid: not one plot
        groups.setdefault(key, {}).setdefault(f"{curve['mode']}/{curve['order']}", []).append(ys)
    out: dict[str, dict[str, Any]] = {}
    for key, series in groups.items():
        names = sorted(series)
        out["backfill/" + "/".join(key)] = {
            "xs": fractions[key],
            "ys": [[sum(col) / len(col) for col in zip(*series[n], strict=True)] for n in names],
            "keys": names,
        }
    return out


def log_run_result(
    result: RunResult,
    result_path: str | os.PathLike,
    leaderboard_df: Any = None,
    plots: Iterable[str | os.PathLike] = (),
    save_dir: str | os.PathLike = ".",
    *,
    board: Mapping[str, Any] | None = None,
    checkpoint: str | os.PathLike | None = None,
) -> str | None:
    """Mirror one written RunResult to W&B and finish the run; return the W&B run id, or None.

    Logs into the active run (``wandb.run``, e.g. the training logger's) if there is one, otherwise starts a
    run named as the training run would be (files under ``<save_dir>/wandb/``). Sends: the summary
    (:func:`summary_from_result`, plus ``board`` — this run's P-metrics and compatibility verdicts, see
    :func:`bctbench.leaderboard.run_summary` — under ``board/...``), the tidy metric rows as ``wandb.Table``
    ``metrics``, the backfilling curves as line plots (:func:`backfill_series`), the result JSON as artefact
    ``result-<benchmark>-<label>-seed<k>`` (type ``run-result``), the method checkpoint (if given) as
    artefact ``model-<benchmark>-<label>-seed<k>`` (type ``model``), ``leaderboard_df`` as ``wandb.Table``
    ``leaderboard`` and each PNG in ``plots`` as ``wandb.Image`` ``plots/<stem>``. Any exception gives a
    warning and None; the run is finished in every case.
    """
    if wandb_mode() == "disabled":
        return None
    label = result.label

    def body(wandb: Any, run: Any) -> str:
        for key, value in summary_from_result(result).items():
            run.summary[key] = value
        for key, value in (board or {}).items():
            run.summary[f"board/{key}"] = _plain(value)
        for key, value in (result.timings or {}).items():
            run.summary[f"time/{key}"] = float(value)

        cols = ["eval_set", "protocol", "query_model", "gallery_model", "metric", "value", "key"]
        rows = [[*(row[c] for c in cols[:-1]), metric_key(row)] for row in result.metrics]
        payload: dict[str, Any] = {
            "metrics": wandb.Table(columns=cols, data=[[_plain(v) for v in r] for r in rows])
        }
        for key, series in backfill_series(result).items():
            payload[key] = wandb.plot.line_series(
                xs=series["xs"],
                ys=series["ys"],
                keys=series["keys"],
                title=f"{result.benchmark} {key.removeprefix('backfill/')}: backfilling ({label}, seed {result.seed})",
                xname="fraction of the gallery backfilled",
            )
        if leaderboard_df is not None:
            payload["leaderboard"] = _table(wandb, leaderboard_df)
        for p in plots:
            p = Path(p)
            payload[f"plots/{p.stem}"] = wandb.Image(os.fspath(p))
        run.log(payload)

        stem = f"{result.benchmark}-{label}-seed{result.seed}"
        meta = {"benchmark": result.benchmark, "method": result.method, "label": label, "seed": result.seed}
        artifact = wandb.Artifact(name=_artifact_safe(f"result-{stem}"), type="run-result", metadata=meta)
        artifact.add_file(os.fspath(result_path), name=Path(result_path).name)
        run.log_artifact(artifact)
        if checkpoint is not None and Path(checkpoint).is_file():
            model = wandb.Artifact(name=_artifact_safe(f"model-{stem}"), type="model", metadata=meta)
            model.add_file(os.fspath(checkpoint), name=Path(checkpoint).name)
            run.log_artifact(model)
        return str(run.id)

    init = {
        "name": run_name(label, result.seed),
        "group": result.benchmark,
        "tags": [result.method, result.benchmark, digest_tag(result.hparams_digest)],
        "job_type": result.method,
        "config": {
            "benchmark": result.benchmark,
            "benchmark_sha256": result.benchmark_sha256,
            "method": result.method,
            "seed": result.seed,
            "method_hparams": result.method_hparams,
            "hparams_digest": result.hparams_digest,
            "old_identity": result.old_identity,
            "flags": list(result.flags),
        },
    }
    return _with_run("result upload", save_dir, init, body, reuse_active=True)


def publish_leaderboard(
    benchmark: str,
    table: Any,
    figures: Iterable[str | os.PathLike] = (),
    markdown: str | None = None,
    save_dir: str | os.PathLike = ".",
    config: Mapping[str, Any] | None = None,
) -> tuple[str | None, Path | None]:
    """Publish a leaderboard as a W&B run (``job_type="leaderboard"``, named ``leaderboard/<benchmark>``,
    grouped by benchmark): ``table`` (a DataFrame, e.g. :func:`bctbench.leaderboard.dashboard.board_table`:
    one row per method with mean and CI columns) as ``wandb.Table`` ``leaderboard``, each PNG in ``figures``
    as ``wandb.Image`` ``figures/<stem>``, and ``markdown`` (the rendered board) as artefact
    ``leaderboard-<benchmark>`` (type ``leaderboard``) together with the figures' PDFs when present.

    Returns ``(run id, local run folder)``; offline, the folder holds what ``wandb sync <folder>`` uploads.
    ``(None, None)`` when disabled or failed (with a warning)."""
    if wandb_mode() == "disabled":
        return None, None

    def body(wandb: Any, run: Any) -> tuple[str, Path | None]:
        paths = [Path(f) for f in figures]
        payload: dict[str, Any] = {"leaderboard": _table(wandb, table)}
        for f in paths:
            if f.suffix.lower() == ".png":
                payload[f"figures/{f.stem}"] = wandb.Image(os.fspath(f))
        run.log(payload)
        artifact = wandb.Artifact(name=_artifact_safe(f"leaderboard-{benchmark}"), type="leaderboard")
        if markdown is not None:
            with artifact.new_file("leaderboard.md", mode="w", encoding="utf-8") as fh:
                fh.write(markdown)
        for f in paths:
            artifact.add_file(os.fspath(f), name=f"figures/{f.name}")
        run.log_artifact(artifact)
        folder = getattr(getattr(run, "settings", None), "sync_dir", None)
        return str(run.id), Path(folder) if folder else None

    init = {
        "name": f"leaderboard/{benchmark}",
        "group": benchmark,
        "tags": ["leaderboard", benchmark],
        "job_type": "leaderboard",
        "config": {"benchmark": benchmark, **dict(config or {})},
    }
    return _with_run("leaderboard upload", save_dir, init, body) or (None, None)
