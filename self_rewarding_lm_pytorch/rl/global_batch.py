"""PPO's global batch: a step is the update of one process holding every process's rollouts.

Each process rolls out, scores and runs the rollout forward on its own rows; from then on a step sees
the global batch (the rows of every process, in rank order):

- advantages are whitened with moments summed over the processes (`ppo_losses.whiten`);
- the rows are gathered, so every process holds the global batch, and each minibatch is drawn from
  it by a generator seeded the same on every process; each process trains on its contiguous share of
  the minibatch's rows (`minibatch_share`);
- token means divide by the minibatch's global token count (`ppo_losses.masked_mean`'s `count`), so the
  shares summed over processes are the global means. DDP and FSDP average gradients over the
  processes, so the loss a process backpropagates is its share times the number of processes.

With one process all of this is the plain per-batch arithmetic. Shapes: b rows, n columns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from self_rewarding_lm_pytorch.core.distributed import Shard

__all__ = ["gather_rows", "global_means", "minibatch_share", "process_sum"]


def process_sum(accelerator: Any) -> Callable[[Tensor], Tensor] | None:
    """A sum over the processes (an all-reduce), or None with one process (nothing to add)."""
    if accelerator.num_processes == 1:
        return None
    return lambda x: accelerator.reduce(x, reduction="sum")


def gather_rows(batch: dict[str, Tensor], accelerator: Any) -> dict[str, Tensor]:
    """Every process's rows of each (b, n_k) tensor, concatenated in rank order (a collective).

    Processes may hold different row counts and lengths: each tensor is right-padded (0 / False) to
    the longest, gathered, and the padding rows are dropped. Right padding past a row's mask changes
    nothing a PPO step computes (a minibatch is trimmed to its longest row).
    """
    if accelerator.num_processes == 1:
        return batch
    any_tensor = next(iter(batch.values()))
    shapes = accelerator.gather(torch.tensor([[t.shape[1] for t in batch.values()] + [any_tensor.shape[0]]]))
    widths, rows = shapes[:, :-1].amax(0).tolist(), shapes[:, -1].tolist()
    keep = torch.cat([torch.arange(r) + i * max(rows) for i, r in enumerate(rows)]).to(any_tensor.device)
    out = {}
    for (name, t), width in zip(batch.items(), widths, strict=True):
        wire = t.to(torch.uint8) if t.dtype == torch.bool else t  # gloo gathers no bool
        padded = F.pad(wire, (0, width - t.shape[1], 0, max(rows) - t.shape[0]))
        out[name] = accelerator.gather(padded)[keep].to(t.dtype)
    return out


def minibatch_share(rows: Tensor, rank: int, world: int) -> tuple[Tensor, bool]:
    """This process's rows of a global minibatch `rows` (1-D indices into the global batch): a contiguous
    share (sizes differ by at most one), and whether it holds none of them.

    Every process must run a forward and backward per minibatch (DDP and FSDP synchronise there), so a
    process whose share is empty gets the minibatch's first row to run with its loss masked out.
    """
    share = Shard(rank, world).share(len(rows))
    if len(share):
        return rows[share.start : share.stop], False
    return rows[:1], True


def global_means(
    row_values: dict[str, Tensor],
    rows: Tensor,
    token_values: dict[str, Tensor],
    tokens: Tensor,
    counts: dict[str, Tensor] | None = None,
    *,
    sum_over_processes: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, Tensor]:
    """Each (b,) value's mean over the rows where `rows` and each (b, n) value's mean over the tokens where
    `tokens`, over every process's rows, plus each scalar of `counts` summed; one reduction. (Not a mean
    of per-process means, which would weigh a process with one row like one with eight.)"""
    counts = counts or {}
    row_f, token_f = rows.float(), tokens.float()
    sums = torch.stack(
        [(x * row_f).sum() for x in row_values.values()]
        + [(x * token_f).sum() for x in token_values.values()]
        + [x.float() for x in counts.values()]
        + [row_f.sum(), token_f.sum()]
    )
    if sum_over_processes is not None:
        sums = sum_over_processes(sums)
    num_rows, num_tokens = sums[-2].clamp(min=1), sums[-1].clamp(min=1)
    parts = iter(sums)
    out = {name: next(parts) / num_rows for name in row_values}
    out |= {name: next(parts) / num_tokens for name in token_values}
    return out | {name: next(parts) for name in counts}
