"""Sequential matrices from tidy rows: pairs, shape, NaN handling and AC / AA through multi_step_metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bctbench.errors import EvaluationError
from bctbench.evaluation.metrics import multi_step_metrics
from bctbench.evaluation.sequential import (
    compatibility_matrices,
    generation_index,
    generation_name,
    sequential_pairs,
)

C = np.array([[0.30, np.nan, np.nan], [0.35, 0.40, np.nan], [0.25, 0.45, 0.50]])


def _rows(matrix: np.ndarray, eval_set: str = "rsynth", protocol: str = "medium", metric: str = "mAP"):
    t = matrix.shape[0]
    return [
        {
            "eval_set": eval_set,
            "protocol": protocol,
            "query_model": generation_name(i),
            "gallery_model": generation_name(j),
            "metric": metric,
            "value": float(matrix[i, j]),
        }
        for i in range(t)
        for j in range(i + 1)
    ]


def test_pairs_are_the_lower_triangle_with_the_diagonal():
    assert sequential_pairs(3) == ["g0-g0", "g1-g0", "g1-g1", "g2-g0", "g2-g1", "g2-g2"]
    assert len(sequential_pairs(5)) == 15
    assert generation_index("g12") == 12 and generation_index("old") is None
    with pytest.raises(EvaluationError):
        sequential_pairs(0)


def test_matrix_and_summary_match_multi_step_metrics():
    rows = _rows(C) + [{**_rows(C)[0], "query_model": "old", "gallery_model": "old", "value": 0.9}]
    (mat,) = compatibility_matrices(rows, 3)
    m = np.array(mat["matrix"], dtype=float)
    assert m.shape == (3, 3)
    np.testing.assert_array_equal(np.tril(m), np.tril(np.nan_to_num(C)))
    assert np.isnan(m[np.triu_indices(3, k=1)]).all()
    expected = multi_step_metrics(C)
    assert mat["AC"] == pytest.approx(expected["AC"]) and mat["AA"] == pytest.approx(expected["AA"])
    # by hand: g1->g0 0.35 > 0.30 yes, g2->g0 0.25 > 0.30 no, g2->g1 0.45 > 0.40 yes
    assert mat["AC"] == pytest.approx(2 / 3) and mat["AA"] == pytest.approx(
        np.mean([0.3, 0.35, 0.4, 0.25, 0.45, 0.5])
    )


def test_groups_by_eval_set_protocol_metric_in_order():
    rows = _rows(C, "b", "private", "mAP@100") + _rows(C * 2, "a", "medium", "mAP")
    mats = compatibility_matrices(rows, 3)
    assert [(x["eval_set"], x["protocol"], x["metric"]) for x in mats] == [
        ("b", "private", "mAP@100"),
        ("a", "medium", "mAP"),
    ]
    assert mats[1]["matrix"][2][2] == pytest.approx(1.0)


def test_missing_entry_gives_no_summary():
    rows = [r for r in _rows(C) if (r["query_model"], r["gallery_model"]) != ("g2", "g0")]
    (mat,) = compatibility_matrices(rows, 3)
    assert math.isnan(mat["matrix"][2][0]) and math.isnan(mat["AC"]) and math.isnan(mat["AA"])
