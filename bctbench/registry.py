"""Method registry: name -> ``CompatibilityMethod`` subclass.

Resolution order of :func:`get_method` (docs/architecture.md §3):

1. already registered (``@register_method``);
2. built-in file ``methods/<name>.py``, imported lazily;
3. entry point ``<name>`` in the group ``bctbench.methods`` (third-party packages), loaded alone;
4. an import string ``pkg.module:Class``.

Unknown names raise :class:`UnknownMethodError` listing :func:`list_methods`. A plugin whose import raises (any
exception, SyntaxError included) is a one-line :class:`BCTBenchError` naming the plugin, its module and the
exception when asked for by name, and only a warning when listing.
"""

from __future__ import annotations

import importlib
import re
import warnings
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from bctbench.errors import BCTBenchError, UnknownMethodError, describe

ENTRY_POINT_GROUP = "bctbench.methods"
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
BUILTIN_PACKAGE = "bctbench.methods"  # the repository's methods/ folder
_REGISTRY: dict[str, type] = {}


def _builtin_dir() -> Path:
    from bctbench._layout import subpackage_dir

    return subpackage_dir(BUILTIN_PACKAGE)


def register_method(name: str | None = None):
    """Class decorator: register a method under ``name`` (default: ``cls.name``). Duplicates raise."""

    def decorator(cls: type) -> type:
        key = name or getattr(cls, "name", None)
        if not key or not _NAME_RE.match(key):
            raise BCTBenchError(f"{cls.__qualname__}: method name {key!r} must be lower snake case")
        existing = _REGISTRY.get(key)
        if existing is not None and existing is not cls:
            if (existing.__module__, existing.__qualname__) != (cls.__module__, cls.__qualname__):
                raise BCTBenchError(
                    f"method name '{key}' is already registered by {existing.__module__}.{existing.__qualname__}; "
                    f"{cls.__module__}.{cls.__qualname__} cannot register it too"
                )
        cls.name = key
        _REGISTRY[key] = cls
        return cls

    return decorator


def registered_method(name: str) -> type | None:
    """The class registered under ``name``, or None (imports nothing)."""
    return _REGISTRY.get(name)


def unregister_method(name: str) -> None:
    """Remove ``name`` from the registry (tests and interactive use)."""
    _REGISTRY.pop(name, None)


def builtin_method_names() -> list[str]:
    """Names of ``methods/*.py`` files, excluding ``_*.py`` (imports nothing)."""
    return sorted(p.stem for p in _builtin_dir().glob("*.py") if not p.stem.startswith("_"))


def _entry_points() -> list[Any]:
    return list(entry_points(group=ENTRY_POINT_GROUP))


def _entry_point_origin(ep: Any) -> str:
    """``entry point 'name = module:Class' of distribution 'dist'`` (for messages)."""
    dist = getattr(ep, "dist", None)
    dist_name = getattr(dist, "name", None) if dist is not None else None
    return f"entry point '{ep.name} = {ep.value}' of distribution '{dist_name or '?'}'"


def _claims(name: str) -> tuple[bool, list[Any]]:
    """Who provides method ``name``: (a built-in file ``methods/<name>.py`` exists, its entry points). More than
    one claim is an error naming all of them."""
    builtin = name in builtin_method_names()
    eps = [ep for ep in _entry_points() if ep.name == name]
    if builtin + len(eps) > 1:
        who = ([f"built-in module {BUILTIN_PACKAGE}.{name}"] if builtin else []) + [
            _entry_point_origin(ep) for ep in eps
        ]
        raise BCTBenchError(
            f"method name '{name}' is claimed by {' and by '.join(who)}; uninstall or rename one of them"
        )
    return builtin, eps


def list_methods() -> list[str]:
    """Sorted union of registered, built-in and entry-point method names (imports nothing heavy)."""
    names = set(_REGISTRY) | set(builtin_method_names())
    names |= {ep.name for ep in _entry_points()}
    return sorted(names)


def _unknown(name: str, reason: str = "") -> UnknownMethodError:
    valid = ", ".join(list_methods()) or "(none registered yet)"
    extra = f" ({reason})" if reason else ""
    return UnknownMethodError(f"unknown method '{name}'{extra}; available methods: {valid}")


def _load_failed(name: str, origin: str, exc: BaseException) -> BCTBenchError:
    return BCTBenchError(f"method plugin '{name}' ({origin}) failed to load: {describe(exc)}")


def _is_missing_module(exc: BaseException, module_name: str) -> bool:
    """True when ``exc`` says that ``module_name`` itself (or a parent package) does not exist, as opposed to an
    import inside it failing."""
    missing = getattr(exc, "name", None)
    return (
        isinstance(exc, ModuleNotFoundError)
        and bool(missing)
        and (module_name == missing or module_name.startswith(f"{missing}."))
    )


def _import_plugin_module(name: str, module_name: str, origin: str):
    """Import a plugin's module; whatever its import raises becomes one line naming the plugin."""
    try:
        return importlib.import_module(module_name)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - a broken plugin is a user error, not a crash
        raise _load_failed(name, origin, exc) from None


def _load_import_string(target: str) -> type:
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if not _is_missing_module(exc, module_name):
            raise _load_failed(target, f"module {module_name}", exc) from None
        raise _unknown(target, f"cannot import module '{module_name}': {exc}") from None
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - SyntaxError or any error raised at import
        raise _load_failed(target, f"module {module_name}", exc) from None
    obj = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise _unknown(target, f"module '{module_name}' has no attribute '{attr}'")
    return obj


def _checked(cls: Any, origin: str, expected_name: str | None = None) -> type:
    """``cls`` if it is a named :class:`CompatibilityMethod` subclass (named ``expected_name`` when given: the
    entry point's name), registered under its name; else a one-line :class:`BCTBenchError` naming ``origin``."""
    from bctbench.method import CompatibilityMethod  # local: keeps `list_methods` light

    if not (isinstance(cls, type) and issubclass(cls, CompatibilityMethod)):
        raise BCTBenchError(f"{origin} does not name a CompatibilityMethod subclass (got {cls!r})")
    if not getattr(cls, "name", None):
        raise BCTBenchError(f"{origin}: method class has no name")
    if expected_name is not None and cls.name != expected_name:
        raise BCTBenchError(
            f"{origin} loads {cls.__module__}.{cls.__qualname__}, whose method name is '{cls.name}', not "
            f"'{expected_name}': the entry-point name and the class's name must be the same"
        )
    if cls.name not in _REGISTRY:
        register_method(cls.name)(cls)
    return cls


def get_method(name: str) -> type:
    """Return the method class for ``name`` (see module docstring for the resolution order)."""
    if ":" in name:
        return _checked(_load_import_string(name), name)
    if not _NAME_RE.match(name):
        raise _unknown(name)
    builtin, eps = _claims(name)  # two plugins with one name: an error, whichever was imported first
    if name in _REGISTRY:
        return _REGISTRY[name]
    if builtin:
        module_name = f"{BUILTIN_PACKAGE}.{name}"
        _import_plugin_module(name, module_name, f"module {module_name}")
        if name not in _REGISTRY:
            raise BCTBenchError(f"module {module_name} does not register a method named '{name}'")
        return _REGISTRY[name]
    for ep in eps:
        module_name = getattr(ep, "module", None) or ep.value.partition(":")[0]
        try:
            cls = ep.load()
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - a broken plugin: loud when asked for by name
            raise _load_failed(name, f"entry point {ep.value}, module {module_name}", exc) from None
        return _checked(cls, _entry_point_origin(ep), expected_name=name)
    raise _unknown(name)


def load_all_methods() -> dict[str, type]:
    """Import every listed method; broken plugins become warnings, never errors."""
    loaded = {}
    for name in list_methods():
        try:
            loaded[name] = get_method(name)
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            warnings.warn(f"method plugin '{name}' is broken and was skipped: {exc}", stacklevel=2)
    return loaded


def describe_parameters(cls: type) -> list[dict[str, Any]]:
    """The hyperparameters of a method class, for ``bctbench methods --params``: one dict per keyword-only
    ``__init__`` parameter with ``name``, ``type`` (annotation text), ``default``, ``search`` (the values of
    :meth:`search_space` for it, or None) and ``doc`` — the first paragraph or bullet of the plugin's module or
    class docstring that names it as ````name````, whitespace collapsed ("" when none does)."""
    import sys

    from bctbench.config import method_annotations
    from bctbench.pipeline import method_parameters

    defaults = method_parameters(cls)
    types_ = method_annotations(cls)
    try:
        space = dict(cls.search_space() or {})
    except Exception:  # noqa: BLE001 - a broken search_space is reported, not fatal here
        space = {}
    module = sys.modules.get(getattr(cls, "__module__", ""))
    texts = [t for t in (getattr(module, "__doc__", None), cls.__doc__) if t]
    chunks = [c for t in texts for c in _doc_chunks(t)]
    out = []
    for name, default in defaults.items():
        ann = types_.get(name)
        doc = next((c for c in chunks if f"``{name}``" in c), "")
        out.append(
            {
                "name": name,
                "type": getattr(ann, "__name__", None) or str(ann).replace("typing.", ""),
                "default": default,
                "search": space.get(name),
                "doc": doc,
            }
        )
    return out


def _doc_chunks(text: str) -> list[str]:
    """Paragraphs and list items of a docstring, each as one line."""
    chunks: list[list[str]] = [[]]
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            chunks.append([])
        elif stripped.startswith(("* ", "- ")):
            chunks.append([stripped[2:]])
        else:
            chunks[-1].append(stripped)
    return [" ".join(c) for c in chunks if c]
