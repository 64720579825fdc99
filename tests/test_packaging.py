"""The package layout: the repository's methods/, datamodules/ and benchmarks/ are the subpackages
bctbench.methods, bctbench.datamodules and bctbench.benchmarks, in a checkout and in an installed wheel."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {
    "bctbench.methods": "methods",
    "bctbench.datamodules": "datamodules",
    "bctbench.benchmarks": "benchmarks",
}


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_pyproject_lists_every_package_folder_under_its_package_name():
    config = _pyproject()["tool"]["setuptools"]
    assert config["package-dir"] == FOLDERS
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "bctbench").rglob("__init__.py")}
    found |= set(FOLDERS)
    assert sorted(config["packages"]) == sorted(found)
    data = config["package-data"]["bctbench.benchmarks"]
    assert "*.yaml" in data and "old_models/*/seed*.pt" in data and "old_models/*/seed*.pt.json" in data
    assert "presets/*/*.yaml" in data  # tuned presets ship with the specs


def test_checkout_imports_no_top_level_methods_or_datamodules():
    """From the repository root (on sys.path, as with `python -m` or pytest), discovery and data loading use
    bctbench.methods / bctbench.datamodules of this checkout, never a second copy as top-level modules."""
    code = """
import json, sys
from bctbench import registry
from bctbench.config import BENCHMARKS_DIR
loaded = registry.load_all_methods()
import bctbench.datamodules.gldv2, bctbench.datamodules.revisited, bctbench.datamodules.synthetic
import bctbench.methods
print(json.dumps({
    "top_level": sorted(m for m in sys.modules if m.split(".")[0] in ("methods", "datamodules", "benchmarks")),
    "methods": sorted(loaded),
    "modules": sorted({c.__module__ for c in loaded.values()}),
    "methods_dir": bctbench.methods.__path__[0],
    "datamodules_dir": bctbench.datamodules.__path__[0],
    "benchmarks": str(BENCHMARKS_DIR),
}))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["top_level"] == []
    assert info["methods"] == sorted(p.stem for p in (ROOT / "methods").glob("[!_]*.py"))
    assert info["modules"] == [f"bctbench.methods.{name}" for name in info["methods"]]
    assert Path(info["methods_dir"]) == ROOT / "methods"
    assert Path(info["datamodules_dir"]) == ROOT / "datamodules"
    assert Path(info["benchmarks"]) == ROOT / "benchmarks"


# ------------------------------------------------------------------------------------------ installed wheel
def _clean_env() -> dict[str, str]:
    """The environment without anything that would import bctbench from elsewhere or send runs elsewhere."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTHON", "BCTBENCH_", "PIP_", "VIRTUAL_ENV"))
    }
    env.update({"PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "WANDB_MODE": "disabled"})
    return env


def _dependency_dirs() -> list[str]:
    """Where the running interpreter finds bctbench's dependencies (its site-packages)."""
    dirs = [sysconfig.get_paths()[k] for k in ("purelib", "platlib")] + list(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    return [d for d in dict.fromkeys(dirs) if Path(d).is_dir()]


def _run(argv: list, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, (
        f"{' '.join(map(str, argv))}: exit {out.returncode}\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
    )
    return out


def _copy_sources(tmp: Path) -> Path:
    """A copy of what a build reads (building writes build/ and *.egg-info next to the sources)."""
    pytest.importorskip("setuptools")
    src = tmp / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("bctbench", "methods", "datamodules", "benchmarks"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    return src


def _build_wheel(tmp: Path) -> Path:
    """A wheel of a copy of the sources, built offline with the running interpreter's setuptools."""
    src = _copy_sources(tmp)
    dist = tmp / "dist"
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-w",
            dist,
            src,
        ],
        tmp,
    )
    (wheel,) = dist.glob("bctbench-*.whl")
    return wheel


def _check_wheel_contents(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    top = {n.split("/")[0] for n in names}
    assert {"methods", "datamodules", "benchmarks"}.isdisjoint(top), sorted(top)
    expected = {f"bctbench/methods/{p.name}" for p in (ROOT / "methods").glob("*.py")}
    expected |= {f"bctbench/datamodules/{p.name}" for p in (ROOT / "datamodules").glob("*.py")}
    expected |= {f"bctbench/benchmarks/{p.name}" for p in (ROOT / "benchmarks").glob("*.yaml")}
    pinned = [p for p in (ROOT / "benchmarks" / "old_models").rglob("seed*.pt*")]
    assert any(p.suffix == ".pt" for p in pinned) and any(p.suffix == ".json" for p in pinned)
    expected |= {f"bctbench/benchmarks/{p.relative_to(ROOT / 'benchmarks').as_posix()}" for p in pinned}
    expected |= {f"bctbench/{sub}/__init__.py" for sub in ("evaluation", "leaderboard", "pipeline")}
    assert not expected - names, sorted(expected - names)
    assert not any(
        n.startswith(("bctbench/benchmarks/perf/", "bctbench/benchmarks/diagnostics/")) for n in names
    )


def _venv(tmp: Path) -> tuple[Path, Path]:
    """A fresh venv without pip; returns (python, site-packages)."""
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], tmp)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    purelib = Path(
        _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp).stdout.strip()
    )
    return python, purelib


def _add_dependencies(purelib: Path) -> None:
    """Let the venv import bctbench's dependencies from the running interpreter's site-packages (a .pth file,
    after the venv's own site-packages; nothing is downloaded)."""
    (purelib / "bctbench_test_dependencies.pth").write_text("".join(f"{d}\n" for d in _dependency_dirs()))


def _venv_with_wheel(tmp: Path, wheel: Path) -> tuple[Path, Path]:
    """A fresh venv holding only the wheel (installed before the dependencies are visible, so that pip sees no
    other bctbench), with the running interpreter's dependencies. Returns (python, site-packages)."""
    python, purelib = _venv(tmp)
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", wheel], tmp)
    _add_dependencies(purelib)
    return python, purelib


@pytest.mark.slow
def test_wheel_installs_and_runs_smoke_outside_the_checkout(tmp_path):
    from bctbench.config import load_benchmark
    from bctbench.results import read_result, result_path

    start = time.time()
    wheel = _build_wheel(tmp_path)
    _check_wheel_contents(wheel)
    python, purelib = _venv_with_wheel(tmp_path, wheel)
    work = tmp_path / "work"  # the cwd of every command: not the checkout
    work.mkdir()
    installed = (purelib / "bctbench").resolve()

    probe = """
import json, sys
import bctbench
from bctbench import registry
from bctbench.config import BENCHMARKS_DIR, list_benchmarks
from bctbench.testing import check_method
loaded = registry.load_all_methods()
check_method("l2")  # the public contract checks work from the installed package
print(json.dumps({"file": bctbench.__file__, "benchmarks": str(BENCHMARKS_DIR), "specs": list_benchmarks(),
                  "methods": sorted(loaded),
                  "top_level": sorted(m for m in sys.modules if m.split(".")[0] in ("methods", "datamodules"))}))
"""
    info = json.loads(_run([python, "-c", probe], work).stdout.strip().splitlines()[-1])
    assert Path(info["file"]).resolve().parent == installed
    assert Path(info["benchmarks"]).resolve() == installed / "benchmarks"
    assert "smoke" in info["specs"] and info["top_level"] == []
    assert info["methods"] == sorted(p.stem for p in (ROOT / "methods").glob("[!_]*.py"))

    bctbench = python.parent / ("bctbench.exe" if os.name == "nt" else "bctbench")
    roots = ["--data-root", work / "data", "--cache-root", work / "cache", "--results-root", work / "results"]
    _run(
        [
            bctbench,
            "run",
            "--benchmark",
            "smoke",
            "--method",
            "bct",
            "--seed",
            "0",
            "--no-wandb",
            "--quiet",
            *roots,
        ],
        work,
    )
    pinned = load_benchmark("smoke").old_model.pinned[0]
    result = read_result(result_path(work / "results", "smoke", "bct", 0))
    assert result.old_identity == pinned
    # the pinned old model was verified and used where it is installed: nothing trained or copied into the cache
    assert not (work / "cache" / "old").exists()
    out = _run([bctbench, "train-old", "--benchmark", "smoke", "--seeds", "0", *roots], work).stdout
    (line,) = [line for line in out.splitlines() if line.startswith("old model 0: ")]
    path, _, identity = line.removeprefix("old model 0: ").rpartition(" (identity ")
    assert Path(path).resolve() == (installed / "benchmarks" / "old_models" / "smoke" / "seed0.pt").resolve()
    assert identity == f"{pinned})"
    assert not (work / "cache" / "old").exists()
    print(f"wheel install test: {time.time() - start:.1f} s")


def test_editable_install_maps_the_folders_without_the_checkout_finder(tmp_path):
    """`pip install -e .` (what `make venv` does): setuptools' import hook alone maps the three folders."""
    src = _copy_sources(tmp_path)
    python, purelib = _venv(tmp_path)
    _add_dependencies(purelib)  # the build backend (setuptools) comes from the running interpreter
    # pip may list a bctbench of the running environment as installed; it only ever uninstalls inside the venv
    _run(
        [python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-e", src],
        tmp_path,
    )
    probe = """
import json, sys
import bctbench
from bctbench._layout import CheckoutFinder
sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, CheckoutFinder)]
import bctbench.methods, bctbench.datamodules, bctbench.benchmarks
from bctbench import registry
loaded = registry.load_all_methods()
print(json.dumps({"dirs": [m.__path__[0] for m in (bctbench, bctbench.methods, bctbench.datamodules, bctbench.benchmarks)],
                  "methods": sorted(loaded),
                  "top_level": sorted(m for m in sys.modules if m.split(".")[0] in ("methods", "datamodules"))}))
"""
    work = tmp_path / "work"
    work.mkdir()
    info = json.loads(_run([python, "-c", probe], work).stdout.strip().splitlines()[-1])
    assert [Path(d).resolve() for d in info["dirs"]] == [
        (src / name).resolve() for name in ("bctbench", "methods", "datamodules", "benchmarks")
    ]
    assert info["methods"] == sorted(p.stem for p in (ROOT / "methods").glob("[!_]*.py"))
    assert info["top_level"] == []
