"""Weights & Biases as a sink: it mirrors results, it never decides them and never fails a run.

* Mode (:func:`wandb_mode`): an explicit ``WANDB_MODE`` wins (``disabled`` in tests/CI); otherwise ``online``
  when an API key is configured (``WANDB_API_KEY`` or a netrc entry for the W&B host), else ``offline`` (local
  run files under ``<save_dir>/wandb/offline-run-*``, uploadable later with ``wandb sync``).
* Naming: project ``bctbench``, run ``<method>-<benchmark>-s<seed>``, ``group=<benchmark>``, tags
  ``[method, benchmark]``, ``job_type`` ``train`` (training logger) or ``eval`` (stand-alone result upload).
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
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from bctbench.errors import describe
from bctbench.results import RunResult, metric_key

PROJECT = "bctbench"
INIT_TIMEOUT_S = 20.0
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
    "log_run_result",
    "make_wandb_logger",
    "run_name",
    "summary_from_result",
    "wandb_mode",
]


def run_name(method: str, benchmark: str, seed: int, suffix: str = "") -> str:
    """Return the W&B run name ``<method>-<benchmark>-s<seed>`` (+ ``-<suffix>``, e.g. ``g1`` for a generation
    of a sequential run)."""
    return f"{method}-{benchmark}-s{int(seed)}" + (f"-{suffix}" if suffix else "")


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


def make_wandb_logger(
    method: str,
    benchmark: str,
    seed: int,
    config: Mapping[str, Any] | None,
    save_dir: str | os.PathLike,
    enabled: bool = True,
    suffix: str = "",
) -> Any:
    """Return a started ``lightning.pytorch.loggers.WandbLogger`` for one training run, or None.

    ``suffix`` names one training job of a multi-job run (``g1``, ``g2``: generations of a sequential run).

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
        logger = WandbLogger(
            name=run_name(method, benchmark, seed, suffix),
            save_dir=os.fspath(save_dir),
            project=PROJECT,
            group=benchmark,
            tags=[method, benchmark] + ([suffix] if suffix else []),
            job_type="train",
            config=dict(config or {}),
            mode=mode,
            settings=_settings(wandb, init_timeout=INIT_TIMEOUT_S),
        )
        _ = logger.experiment  # start now (rank zero only; other ranks get a dummy)
        return logger
    except Exception as exc:  # noqa: BLE001 - W&B must never fail a run
        _warn("logger setup", exc)
        return None


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


def log_run_result(
    result: RunResult,
    result_path: str | os.PathLike,
    leaderboard_df: Any = None,
    plots: Iterable[str | os.PathLike] = (),
    save_dir: str | os.PathLike = ".",
) -> str | None:
    """Mirror one written RunResult to W&B and finish the run; return the W&B run id, or None.

    Logs into the active run (``wandb.run``, e.g. the training logger's) if there is one, otherwise starts a
    run (``job_type="eval"``, files under ``<save_dir>/wandb/``). Sends: the summary
    (:func:`summary_from_result`), the tidy metric rows as ``wandb.Table`` ``metrics``, the result JSON as an
    artefact ``result-<method>-<benchmark>-s<seed>`` (type ``run-result``), ``leaderboard_df`` (if given) as
    ``wandb.Table`` ``leaderboard`` and each PNG in ``plots`` as ``wandb.Image`` ``plots/<stem>``. Any exception
    gives a warning and None; the run is finished in every case.
    """
    mode = wandb_mode()
    if mode == "disabled":
        return None
    run = None
    try:
        import wandb

        run = wandb.run
        if run is None:
            Path(save_dir).mkdir(parents=True, exist_ok=True)
            run = wandb.init(
                project=PROJECT,
                name=run_name(result.method, result.benchmark, result.seed),
                group=result.benchmark,
                tags=[result.method, result.benchmark],
                job_type="eval",
                dir=os.fspath(save_dir),
                mode=mode,
                config={
                    "benchmark": result.benchmark,
                    "method": result.method,
                    "seed": result.seed,
                    "method_hparams": result.method_hparams,
                    "flags": list(result.flags),
                },
                settings=_settings(wandb, init_timeout=INIT_TIMEOUT_S, console="off"),
            )
        run_id = str(run.id)

        for key, value in summary_from_result(result).items():
            run.summary[key] = value
        if result.timings:
            for key, value in result.timings.items():
                run.summary[f"time/{key}"] = float(value)

        cols = ["eval_set", "protocol", "query_model", "gallery_model", "metric", "value", "key"]
        rows = [[*(row[c] for c in cols[:-1]), metric_key(row)] for row in result.metrics]
        payload: dict[str, Any] = {
            "metrics": wandb.Table(columns=cols, data=[[_plain(v) for v in r] for r in rows])
        }
        if leaderboard_df is not None:
            payload["leaderboard"] = _table(wandb, leaderboard_df)
        for p in plots:
            p = Path(p)
            payload[f"plots/{p.stem}"] = wandb.Image(os.fspath(p))
        run.log(payload)

        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"result-{result.method}-{result.benchmark}-s{result.seed}")
        artifact = wandb.Artifact(
            name=name,
            type="run-result",
            metadata={"benchmark": result.benchmark, "method": result.method, "seed": result.seed},
        )
        artifact.add_file(os.fspath(result_path), name=Path(result_path).name)
        run.log_artifact(artifact)
    except Exception as exc:  # noqa: BLE001 - W&B must never fail a run
        _warn("result upload", exc)
        run_id = None
    finally:
        if run is not None:
            try:
                run.finish()
            except Exception as exc:  # noqa: BLE001
                _warn("finish", exc)
                run_id = None
    return run_id
