"""Published numbers the suite sets its own rankings beside (``docs/results.md`` §10).

The AdvBCT paper's main table (Pan et al., CVPR 2023; shown as the results table of the authors' repository):
P_1 in % per method and allocation, R18 → R18 (extended-data, extended-class) and R18 → R50 (extended-backbone),
on GLDv2 with ROxford5k / RParis6k / GLDv2-test, one seed each. The rows are particular variants of the
baselines; :data:`ADVBCT_ROWS` names the suite's row that runs each variant at the paper's hyperparameters.
"""

from __future__ import annotations

from typing import Any

#: block of the table -> method -> P_1 (%), as printed
ADVBCT_P1: dict[str, dict[str, float]] = {
    "extended-data": {"bct": 51.13, "lce": 53.34, "unibct": 53.52, "hot_refresh": 50.03, "advbct": 53.45},
    "extended-class": {"bct": 50.41, "lce": 51.51, "unibct": 51.17, "hot_refresh": 47.57, "advbct": 52.35},
    "extended-backbone (data)": {
        "bct": 51.52,
        "lce": 53.25,
        "unibct": 52.31,
        "hot_refresh": 52.60,
        "advbct": 53.01,
    },
    "extended-backbone (class)": {
        "bct": 50.91,
        "lce": 52.15,
        "unibct": 51.06,
        "hot_refresh": 51.21,
        "advbct": 52.83,
    },
}

#: method -> the suite's row label of the variant in the table (BCT on old-class samples only, LCE as
#: re-implemented by AdvBCT, UniBCT without refinement, Hot-refresh's RACT loss, AdvBCT's official code)
ADVBCT_ROWS: dict[str, str] = {
    "bct": "bct:old_classes",
    "lce": "lce:advbct_reimpl",
    "unibct": "unibct:advbct_table",
    "hot_refresh": "hot_refresh",
    "advbct": "advbct",
}

_ALLOCATION_BLOCK = {"class30to100": "class", "data30to100": "data"}


def advbct_block(spec: Any) -> str | None:
    """The block of the AdvBCT table that matches a benchmark spec: its allocation (30 % → 100 % of the
    classes or of the images per class) and whether the new backbone differs from the old one; None when the
    table has no such block (sequential, open-class, ...)."""
    kind = _ALLOCATION_BLOCK.get(spec.data.allocation)
    if kind is None or getattr(spec, "sequential_steps", 1) != 1:
        return None
    if spec.models.new_backbone != spec.models.old_backbone:
        return f"extended-backbone ({kind})"
    return f"extended-{kind}"
