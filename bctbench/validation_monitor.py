"""A validation retrieval metric during training: every ``every`` epochs, the new model's mAP@100 on each
GLDv2-format validation set, logged as ``val/<set>/mAP@100`` (and ``val/<set>/cross_mAP@100`` against the
frozen old model's gallery).

It is a monitor, not the report: the exact evaluator scores the test sets once after training, and model
selection stays at the last epoch. The average precision is torchmetrics' ``RetrievalMAP(top_k=100)`` over each
query's top 100 gallery items (normalised by the relevant items among those 100, where GLDv2's mAP@100 divides
by min(#relevant, 100)). Features are extracted on every rank and gathered (so every rank scores the same
ranking); the metric is then computed once and logged with ``rank_zero_only``.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

log = logging.getLogger("bctbench")

TOP_K = 100

__all__ = ["TOP_K", "retrieval_map_at_k", "validation_monitor"]


def retrieval_map_at_k(ranks: np.ndarray, solution: list, top_k: int = TOP_K) -> float:
    """mAP@k of a ranking with torchmetrics' ``RetrievalMAP``.

    Args:
        ranks: ``int[n_queries, >= k]`` gallery indices, best first.
        solution: per query, the relevant gallery indices (queries with none are skipped).
    Returns the mean over scored queries (a fraction; NaN without scored queries)."""
    from torchmetrics.retrieval import RetrievalMAP

    ranks = np.asarray(ranks)[:, :top_k]
    keep = [i for i, rel in enumerate(solution) if len(rel)]
    if not keep:
        return float("nan")
    sub = ranks[keep]  # [Q, k]
    rel = np.zeros(sub.shape, dtype=bool)
    for row, i in enumerate(keep):
        rel[row] = np.isin(sub[row], np.asarray(list(solution[i])))
    q, k = sub.shape
    preds = torch.arange(k, 0, -1, dtype=torch.float32).repeat(q)  # rank order as scores
    target = torch.from_numpy(rel.reshape(-1))
    indexes = torch.arange(q).repeat_interleave(k)
    metric = RetrievalMAP(top_k=top_k, empty_target_action="neg")
    return float(metric(preds, target, indexes=indexes))


def validation_monitor(eval_sets: list, transform: Any, every: int, batch_size: int = 256) -> Any:
    """A Lightning callback running the monitor on the GLDv2-format sets of ``eval_sets`` every ``every``
    epochs (and after the last one)."""
    import lightning.pytorch as pl

    from bctbench.evaluation.evalsets import GLDv2EvalSet
    from bctbench.evaluation.features import extract_features
    from bctbench.evaluation.search import rank

    sets = [es for es in eval_sets if isinstance(es, GLDv2EvalSet)]

    class ValidationMonitor(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module) -> None:
            epoch = trainer.current_epoch + 1
            if not sets or (epoch % every and epoch != trainer.max_epochs):
                return
            from bctbench.pipeline.context import isolated_rng

            with isolated_rng():  # a loader draws a base seed: training's random streams must not move
                self._run(trainer, pl_module, epoch)

        def _run(self, trainer, pl_module, epoch: int) -> None:
            enc = pl_module.encoders()
            for es in sets:

                def feats(name: str, paths, _es=es) -> np.ndarray:
                    return extract_features(
                        enc[name],
                        paths,
                        None,
                        transform,
                        batch_size=batch_size,
                        device=None,
                        desc=f"val {name}",
                    )

                q = feats("new", es.query_paths)
                values = {
                    "mAP@100": rank(q, feats("new", es.gallery_paths), topk=TOP_K),
                    "cross_mAP@100": rank(q, feats("old", es.gallery_paths), topk=TOP_K),
                }
                for key, ranks in values.items():
                    value = retrieval_map_at_k(ranks, list(es.solution))
                    pl_module.log(f"val/{es.name}/{key}", value, rank_zero_only=True, on_epoch=True)
                    log.debug("val %s %s epoch %d: %.4f", es.name, key, epoch, value)

    return ValidationMonitor()
