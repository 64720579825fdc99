"""Named hyperparameter presets: the ``tuned`` preset written by ``bctbench tune`` and the paper variants a
method declares (``variants`` class attribute), used by ``bctbench run --preset NAME``.

A preset run is its own leaderboard row, labelled ``method:<preset>``. Tuned presets are committed files,
``benchmarks/presets/<benchmark>/<method>.yaml``: the chosen hyperparameters and the full trial log of the
tuning that chose them (see :mod:`bctbench.pipeline.tuning`); a benchmark may take its tuned presets from
another one (``tuning.preset_source`` in its spec, e.g. the sequential benchmark from ``synth_class30to100``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from bctbench.errors import ConfigError

TUNED = "tuned"
NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
FORMAT = "bctbench-preset/1"

__all__ = ["FORMAT", "TUNED", "available", "preset_file", "presets_dir", "read_preset", "resolve"]


def presets_dir() -> Path:
    """``benchmarks/presets`` beside the benchmark specs."""
    from bctbench import config

    return Path(config.BENCHMARKS_DIR) / "presets"


def preset_file(benchmark: str, method: str) -> Path:
    """``benchmarks/presets/<benchmark>/<method>.yaml``: the tuned preset of a method on a benchmark."""
    return presets_dir() / benchmark / f"{method}.yaml"


def read_preset(path: Path) -> dict[str, Any]:
    """Read a tuned-preset file (YAML, safe loader) and check its shape; one-line :class:`ConfigError`s."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read preset ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ConfigError(f"{path}: not a {FORMAT} file (key 'format')")
    for key, kind in (("method", str), ("benchmark", str), ("chosen", dict), ("trials", list)):
        if not isinstance(data.get(key), kind):
            raise ConfigError(f"{path}: key '{key}' missing or not a {kind.__name__}")
    return data


def _variants(cls: type) -> Mapping[str, Mapping[str, Any]]:
    return dict(getattr(cls, "variants", None) or {})


def available(spec: Any, cls: type) -> list[str]:
    """Preset names ``cls`` can run with on ``spec``: ``tuned`` when its tuned preset file exists (complete),
    then the method's declared variants."""
    names = []
    path = preset_file(_source(spec), cls.name)
    if path.is_file():
        try:
            if read_preset(path).get("complete"):
                names.append(TUNED)
        except ConfigError:
            pass
    return names + sorted(_variants(cls))


def _source(spec: Any) -> str:
    return getattr(getattr(spec, "tuning", None), "preset_source", None) or spec.name


def _check_current(path: Path, data: dict[str, Any], spec: Any) -> None:
    """A tuned preset is frozen to the spec it was tuned on: refuse one tuned under another version.

    Compared: the spec's :attr:`~bctbench.config.BenchmarkSpec.tuning_sha256` (seeds and other seeds' pins
    left out); a log written before that key existed is compared by the full spec sha256."""
    from bctbench.config import load_benchmark

    source = _source(spec)
    current = spec if source == spec.name else load_benchmark(source)
    identities = data.get("identities") or {}
    key = "tuning_sha256" if "tuning_sha256" in identities else "benchmark_sha256"
    want = current.tuning_sha256 if key == "tuning_sha256" else current.sha256
    got = identities.get(key)
    if got != want:
        raise ConfigError(
            f"{path}: tuned under another version of benchmark '{source}' ({key} {str(got)[:12]}, now "
            f"{want[:12]}); tune again"
        )


def resolve(spec: Any, cls: type, name: str) -> dict[str, Any]:
    """The hyperparameters of preset ``name`` for method class ``cls`` on benchmark ``spec``.

    ``tuned``: the ``chosen`` hyperparameters of the (complete) tuned-preset file of the spec's preset source;
    otherwise a key of ``cls.variants``. Raises :class:`ConfigError` (one line) for an unknown name, a missing,
    incomplete or foreign preset file, or values that are not the method's hyperparameters."""
    from bctbench.pipeline import method_parameters

    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ConfigError(f"--preset: invalid preset name {name!r} (lower-case letters, digits, '_')")
    params = method_parameters(cls)
    if name == TUNED:
        path = preset_file(_source(spec), cls.name)
        if not path.is_file():
            raise ConfigError(
                f"method '{cls.name}' has no tuned preset for benchmark '{_source(spec)}' ({path} missing; "
                f"run `bctbench tune --benchmark {_source(spec)} --method {cls.name}`)"
            )
        data = read_preset(path)
        if data["method"] != cls.name or data["benchmark"] != _source(spec):
            raise ConfigError(
                f"{path}: preset of method '{data['method']}' on '{data['benchmark']}', expected "
                f"'{cls.name}' on '{_source(spec)}'"
            )
        if not data.get("complete"):
            raise ConfigError(f"{path}: tuning is not complete ({len(data['trials'])} trials so far)")
        _check_current(path, data, spec)
        values = dict(data["chosen"])
    else:
        variants = _variants(cls)
        if name not in variants:
            known = ", ".join(available(spec, cls)) or "none"
            raise ConfigError(f"method '{cls.name}' has no preset '{name}' (available: {known})")
        values = dict(variants[name])
    unknown = sorted(set(values) - set(params))
    if unknown:
        raise ConfigError(f"preset '{name}' of method '{cls.name}': '{unknown[0]}' is not a hyperparameter")
    return values
