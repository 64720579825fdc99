"""Benchmark specs shipped with bctbench, installed as the package ``bctbench.benchmarks``: its data files are the
specs ``*.yaml`` and the pinned old models ``old_models/<benchmark>/seed<k>.pt`` (+ ``.pt.json`` sidecars).
The ``perf/`` and ``diagnostics/`` scripts are repository tools, not part of the package."""
