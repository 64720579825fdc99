"""Progress of long steps: a live bar on a terminal, plain periodic lines otherwise (logs, CI, the run queue).

The CLI turns it on (``configure(True)``) unless ``--quiet``; library use stays silent by default. Plain lines
go to the ``bctbench`` logger at most every ``interval_s`` seconds (default 15, ``$BCTBENCH_PROGRESS_S``) and
once at the end of a step that lasted at least a fifth of that: ``<what>: 120/480 batches (25 %), 31 s, about
93 s left`` … ``<what>: done, 480 batches in 124 s``. Only rank 0 of a distributed job reports.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

log = logging.getLogger("bctbench")
T = TypeVar("T")

_state = {"enabled": False, "interval_s": 15.0, "tty": None}

__all__ = ["Progress", "configure", "enabled", "quiet_lightning_logs", "stage", "track"]


def configure(on: bool, interval_s: float | None = None, tty: bool | None = None) -> None:
    """Switch progress reporting on or off; ``tty`` forces bar (True) or plain lines (False), default: whether
    stderr is a terminal."""
    _state["enabled"] = bool(on)
    env = os.environ.get("BCTBENCH_PROGRESS_S")
    _state["interval_s"] = float(interval_s if interval_s is not None else env or 15.0)
    _state["tty"] = tty


def enabled() -> bool:
    """Whether progress is reported (and this process is rank 0)."""
    return bool(_state["enabled"]) and int(os.environ.get("RANK", "0") or 0) == 0


def _is_tty() -> bool:
    return sys.stderr.isatty() if _state["tty"] is None else bool(_state["tty"])


class Progress:
    """Counts units of one step and reports them (see the module docstring); a no-op when progress is off.

    Use as a context manager: ``with Progress("features rsynth query", total=12, unit="batches") as p:
    ... p.advance()``."""

    def __init__(self, what: str, total: int | None = None, unit: str = "items") -> None:
        self.what, self.total, self.unit = what, total, unit
        self.done = 0
        self.reported = False
        self.on = enabled()
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> Progress:
        self.start = self.last = time.monotonic()
        if self.on and _is_tty():
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(transient=True)
            self._bar.start()
            self._task = self._bar.add_task(self.what, total=self.total)
        return self

    def advance(self, n: int = 1) -> None:
        self.done += n
        if not self.on:
            return
        if self._bar is not None:
            self._bar.advance(self._task, n)
            return
        now = time.monotonic()
        if now - self.last >= _state["interval_s"]:
            self.last = now
            self.reported = True
            log.info("%s: %s", self.what, self._status(now))

    def _status(self, now: float) -> str:
        spent = now - self.start
        if not self.total:
            return f"{self.done} {self.unit}, {spent:.0f} s"
        share = self.done / self.total
        left = spent * (1 - share) / share if share > 0 else float("nan")
        tail = f", about {left:.0f} s left" if share > 0 else ""
        return f"{self.done}/{self.total} {self.unit} ({100 * share:.0f} %), {spent:.0f} s{tail}"

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._bar is not None:
            self._bar.stop()
        spent = time.monotonic() - self.start
        if self.on and exc_type is None and (self.reported or spent >= _state["interval_s"] / 5):
            log.info("%s: done, %d %s in %.0f s", self.what, self.done, self.unit, spent)


def track(items: Iterable[T], what: str, total: int | None = None, unit: str = "items") -> Iterator[T]:
    """Iterate ``items`` while reporting progress (``total`` defaults to ``len(items)`` when it has one)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(what, total, unit) as p:
        for item in items:
            yield item
            p.advance()


@contextlib.contextmanager
def stage(what: str) -> Iterator[None]:
    """A step without countable units: one line when it starts and one with its time when it ends."""
    if not enabled():
        yield
        return
    log.info("%s ...", what)
    start = time.monotonic()
    yield
    log.info("%s: done in %.1f s", what, time.monotonic() - start)


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return "💡 Tip" not in msg and "litlogger" not in msg.lower()


def quiet_lightning_logs() -> None:
    """Lightning's log lines once (through the root handler, not also its own) and without its advertising
    tips. Idempotent; call after Lightning is imported."""
    for name in (
        "lightning",
        "lightning.pytorch",
        "lightning.fabric",
        "pytorch_lightning",
        "lightning_fabric",
    ):
        lg = logging.getLogger(name)
        for handler in list(lg.handlers):
            lg.removeHandler(handler)
        lg.propagate = True
    for handler in logging.getLogger().handlers:  # filters on handlers also see records of child loggers
        if not any(isinstance(f, _DropTips) for f in handler.filters):
            handler.addFilter(_DropTips())


def training_progress_callback() -> Any:
    """A Lightning callback with plain training progress lines (for non-terminals, where Lightning's bar is
    off): every ``interval_s`` ``train <module>: epoch e/E, batch b/B, loss x``, and one line per epoch with its
    time and the epoch means of ``train/loss/total`` and ``train/acc`` when logged."""
    import lightning.pytorch as pl

    class TrainingProgress(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self.start = self.last = time.monotonic()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            now = time.monotonic()
            if not enabled() or now - self.last < _state["interval_s"]:
                return
            self.last = now
            loss = trainer.callback_metrics.get("train/loss/total_step")
            log.info(
                "train %s: epoch %d/%d, batch %d/%s%s, %.0f s",
                _module_name(pl_module),
                trainer.current_epoch + 1,
                trainer.max_epochs,
                batch_idx + 1,
                trainer.num_training_batches,
                f", loss {float(loss):.4f}" if loss is not None else "",
                now - self.start,
            )

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            if not enabled():
                return
            metrics = trainer.callback_metrics
            parts = [
                f"{label} {float(metrics[key]):.4f}"
                for key, label in (("train/loss/total_epoch", "loss"), ("train/acc", "acc"))
                if key in metrics
            ]
            log.info(
                "train %s: epoch %d/%d done in %.0f s%s",
                _module_name(pl_module),
                trainer.current_epoch + 1,
                trainer.max_epochs,
                time.monotonic() - self.start,
                (": " + ", ".join(parts)) if parts else "",
            )

    return TrainingProgress()


def _module_name(module: Any) -> str:
    return str(getattr(module, "name", None) or type(module).__name__)
