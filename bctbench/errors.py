"""Exception types. Every error a user can cause derives from :class:`BCTBenchError`.

The CLI prints such errors as one line (``error: <message>``) and exits with status 2, so messages must name
the offending file, line, id or key themselves.
"""

from __future__ import annotations


def describe(exc: BaseException) -> str:
    """``Type: first line of the message`` of an exception: the one-line form error messages quote."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0].strip()}" if lines else type(exc).__name__


class BCTBenchError(Exception):
    """Base class of user-facing errors (bad input, bad configuration, unknown names)."""


class DataError(BCTBenchError):
    """A dataset file or folder is missing, malformed or inconsistent."""


class ConfigError(BCTBenchError):
    """A benchmark spec, override or option is invalid."""


class UnknownMethodError(BCTBenchError, KeyError):
    """A method name that no registry source knows; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0]) if self.args else ""


class EvaluationError(BCTBenchError):
    """Features, rankings or ground truth handed to the evaluator are inconsistent."""


class CheckpointError(BCTBenchError):
    """A checkpoint is missing, does not match its sha256, or does not fit the model strictly."""


class SealedTestSetError(BCTBenchError):
    """A test eval set's ground truth was opened while only validation data may be read (during tuning;
    :func:`bctbench.pipeline.validation_only`)."""
