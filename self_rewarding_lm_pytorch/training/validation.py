"""Validation and early stopping for the training loop (training/loop.py).

Kept apart from the loop because none of it changes the weights: `validation_means` is one pass
over the validation set, split across processes and reduced to item-weighted means, and
`update_best` decides from those means whether this is the best step so far and whether to stop.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import send_to_device
from torch import Tensor, nn

from self_rewarding_lm_pytorch.training.checkpoint import RunState
from self_rewarding_lm_pytorch.training.config import TrainConfig
from self_rewarding_lm_pytorch.training.metrics import as_metric

__all__ = ["update_best", "valid_shards", "validation_means"]


def valid_shards(dataset: Any, batch_size: int, *, rank: int, nproc: int, sharded: bool) -> Iterator[tuple[list, int]]:
    """(items, weight) per global batch of `batch_size`, split as evenly as possible over the processes.

    Unsharded, a process with no items in a batch skips it. Sharded, every forward is a collective,
    so such a process runs the batch's first item with weight 0 instead.
    """
    n = len(dataset)
    for start in range(0, n, batch_size):
        count = min(batch_size, n - start)
        lo, hi = start + count * rank // nproc, start + count * (rank + 1) // nproc
        if lo < hi:
            yield [dataset[i] for i in range(lo, hi)], hi - lo
        elif sharded:
            yield [dataset[start]], 0


def _valid_step(task: Any, model: nn.Module, batch: Any) -> dict:
    if callable(getattr(task, "valid_step", None)):
        return task.valid_step(model, batch)
    loss, metrics = task.step(model, batch)
    return {"loss": loss, **metrics}


def validation_means(
    task: Any, model: nn.Module, shards: Iterator[tuple[list, int]], accelerator: Accelerator
) -> dict[str, float]:
    """Each validation metric's item-weighted mean over every process's `shards` (one reduction)."""
    device, was_training = accelerator.device, model.training
    sums: dict[str, Tensor] = {}
    count = 0
    model.eval()
    with torch.no_grad():
        for items, weight in shards:
            metrics = _valid_step(task, model, send_to_device(task.collate(items), device))
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + as_metric(k, v, device) * weight
            count += weight
    model.train(was_training)
    names = sorted(sums)
    stacked = torch.stack([sums[k] for k in names] + [torch.tensor(float(count), device=device)])
    totals = accelerator.reduce(stacked, reduction="sum").tolist()
    return {k: v / totals[-1] for k, v in zip(names, totals[:-1], strict=True)}


def update_best(
    state: RunState, metrics: dict[str, float], config: TrainConfig, full_weights: Callable[[], dict[str, Tensor]]
) -> None:
    """Record a new best validation in `state` (its weights too when early stopping may restore them),
    or count a bad evaluation and set `state.stopped_early` once `early_stopping_patience` is reached.

    `full_weights` is called only for a new best under early stopping: when sharded it is a collective,
    and every process reaches the same decision because the metrics were reduced over all of them.
    """
    name, patience = config.early_stopping_metric, config.early_stopping_patience
    if name not in metrics:
        if patience is not None:
            raise ValueError(f"early_stopping_metric {name!r} is not a validation metric; have {sorted(metrics)}")
        return
    value, best = metrics[name], None if state.best is None else state.best[name]
    better = best is None or (value < best if config.early_stopping_mode == "min" else value > best)
    if not math.isnan(value) and better:
        state.best, state.best_step, state.bad_evals = dict(metrics), state.step, 0
        if patience is not None:
            state.best_weights = full_weights()
        return
    state.bad_evals += 1
    if patience is not None and state.bad_evals >= patience:
        state.stopped_early = True
