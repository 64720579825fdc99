"""Hot-refresh RACT with negatives gathered across 2 CPU processes (gloo, localhost) equals one process with the
concatenated batch.

What is equal, exactly (docs/methods.md §8): every rank scores its B local anchors against the same N = 2B
gathered negatives (no gradient through the gathered copies), so

* the mean of the per-rank losses equals the single-process loss over the 2B anchors (equal B per rank), and
* rank r's gradient w.r.t. its local embeddings, divided by the world size (DDP averages gradients), equals the
  single-process gradient rows of those samples.

The per-rank losses themselves differ from each other and from a local-only loss (fewer negatives).
"""

from __future__ import annotations

import os
import socket
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2
B = 6
NUM_LABELS = 4  # labels repeat across ranks: the same-class mask must cover gathered columns too
TOPK = 3  # fewer than the valid negatives, so the top-k selection over the gathered batch matters


def _global_batch(embed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    new_raw = torch.randn(WORLD * B, embed, generator=g) * 3.0
    old_raw = new_raw + 2.0 * torch.randn(WORLD * B, embed, generator=g)
    labels = torch.randint(0, NUM_LABELS, (WORLD * B,), generator=g)
    return new_raw, old_raw, labels


def _model(setup_dict: dict):
    from bctbench.method import MethodSetup
    from bctbench.registry import get_method

    return get_method("hot_refresh")(MethodSetup.from_dict(setup_dict), topk=TOPK)


def _loss_and_grad(model, new_raw, old_raw, labels):
    from bctbench.method import ModelOutput

    new_raw = new_raw.clone().requires_grad_(True)
    batch = {"labels": labels}
    loss = model.compatibility_loss(
        batch, ModelOutput.from_embedding(new_raw), ModelOutput.from_embedding(old_raw)
    )
    loss = loss["ract"]
    loss.backward()
    return loss.detach(), new_raw.grad


def _worker(rank: int, port: int, setup_dict: dict, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        model = _model(setup_dict)

        def gather_no_grad(tensor):
            parts = [torch.empty_like(tensor) for _ in range(WORLD)]
            dist.all_gather(parts, tensor.detach().contiguous())
            return torch.cat(parts), rank * tensor.shape[0]

        model.gather_no_grad = gather_no_grad  # stands in for Lightning's all_gather(sync_grads=False)
        new_raw, old_raw, labels = _global_batch(setup_dict["embed_dim"])
        local = slice(rank * B, (rank + 1) * B)
        loss, grad = _loss_and_grad(model, new_raw[local], old_raw[local], labels[local])
        torch.save({"loss": loss, "grad": grad}, f"{out_dir}/rank{rank}.pt")
        dist.barrier()  # both ranks done before either leaves
    except BaseException:
        traceback.print_exc()
        os._exit(1)
    # leave without tearing gloo down: its teardown intermittently aborts the process (SIGABRT,
    # "terminate called without an active exception") after the work is done
    os._exit(0)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo"
)
def test_gathered_ract_equals_single_process_concatenated_batch(setup, tmp_path):
    setup_dict = {k: getattr(setup, k) for k in setup.__dataclass_fields__}
    mp.spawn(_worker, args=(_free_port(), setup_dict, str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    model = _model(setup_dict)  # no trainer: gather_no_grad returns the local (here: the whole) batch
    new_raw, old_raw, labels = _global_batch(setup.embed_dim)
    single_loss, single_grad = _loss_and_grad(model, new_raw, old_raw, labels)

    assert single_grad.abs().sum(dim=1).min() > 0
    mean_loss = torch.stack([r["loss"] for r in ranks]).mean()
    torch.testing.assert_close(mean_loss, single_loss, rtol=1e-6, atol=1e-6)
    for r in range(WORLD):
        torch.testing.assert_close(
            ranks[r]["grad"] / WORLD, single_grad[r * B : (r + 1) * B], rtol=1e-5, atol=1e-7
        )

    # the gathered negatives matter: a rank scoring only its local batch gets a different loss
    local_loss, _ = _loss_and_grad(model, new_raw[:B], old_raw[:B], labels[:B])
    assert not torch.allclose(local_loss, ranks[0]["loss"])
    assert not torch.allclose(ranks[0]["loss"], ranks[1]["loss"])
