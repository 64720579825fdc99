"""benchmarks/diagnostics/alignment.py: the statistics on hand-made models."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "diagnostics" / "alignment.py"
spec = importlib.util.spec_from_file_location("alignment_diagnostics", SCRIPT)
alignment_diagnostics = importlib.util.module_from_spec(spec)
spec.loader.exec_module(alignment_diagnostics)


class Fixed(nn.Module):
    """Maps image i (the value of its first pixel) to row i of ``table``; returns ``(embedding, logits)``."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("table", table)
        self.bn = nn.BatchNorm1d(2)

    def forward(self, images):
        e = self.table[images[:, 0, 0, 0].long()]
        return e, e


class Pair(nn.Module):
    def __init__(self, new_table, old_table):
        super().__init__()
        self.new, self.old = Fixed(new_table), Fixed(old_table)


def batch(labels):
    images = torch.zeros(len(labels), 3, 2, 2)
    images[:, 0, 0, 0] = torch.arange(len(labels), dtype=torch.float32)
    return {"images": images, "labels": torch.tensor(labels)}


def test_identical_models_are_perfectly_aligned():
    table = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    stats = alignment_diagnostics.alignment(Pair(table, table), [batch([0, 1, 0, 2])])
    assert stats["pos cos"] == pytest.approx(1.0)
    # hardest other-class old embedding: image 0 (e_x): e_y, -e_x -> 0; image 1 (e_y): e_x, e_x+e_y, -e_x
    # -> 1/sqrt(2); image 2 (e_x+e_y): e_y, -e_x -> 1/sqrt(2); image 3 (-e_x): e_x, e_y, e_x+e_y -> 0
    assert stats["hard-neg cos"] == pytest.approx((0 + 2**-0.5 + 2**-0.5 + 0) / 4)
    # nearest other old embedding: 0 -> 2 (same class), 1 -> 2 (not), 2 -> 0 or 1 (tie: 0, same), 3 -> 1 (not)
    assert stats["new→old top-1"] == pytest.approx(2 / 4)


def test_orthogonal_models_have_zero_positive_cosine():
    new = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    old = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    stats = alignment_diagnostics.alignment(Pair(new, old), [batch([0, 1])])
    assert stats["pos cos"] == pytest.approx(0.0)
    lo, hi = alignment_diagnostics.bn_running_var_range(Pair(new, old).new)
    assert lo == hi == 1.0
