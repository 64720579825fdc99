"""Feature extraction under DDP: 2 CPU processes (gloo, localhost) each embed their shard and gather; every rank
returns exactly the single-process feature array."""

from __future__ import annotations

import os
import socket
import traceback

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image
from torch import nn

WORLD = 2


class MeanPool(nn.Module):
    def forward(self, x):
        return torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)


def _extract(paths):
    from bctbench.data import build_test_transform
    from bctbench.evaluation.features import extract_features

    return extract_features(MeanPool(), paths, None, build_test_transform(16), batch_size=2)


def _worker(rank: int, port: int, paths: list[str], out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        np.save(f"{out}/rank{rank}.npy", _extract(paths))
        dist.barrier()  # both ranks done before either leaves
    except BaseException:
        traceback.print_exc()
        os._exit(1)
    # leave without tearing gloo down: its teardown intermittently aborts the process (SIGABRT,
    # "terminate called without an active exception") after the work is done
    os._exit(0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sharded_extraction_equals_single_process(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(7):  # odd count: uneven shards
        p = tmp_path / f"{i}.jpg"
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    single = _extract(paths)
    mp.spawn(_worker, args=(_free_port(), paths, str(tmp_path)), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        np.testing.assert_array_equal(np.load(tmp_path / f"rank{rank}.npy"), single)
