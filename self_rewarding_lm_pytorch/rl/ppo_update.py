"""The optimisation half of a PPO step: which rows each minibatch update trains on, and the pieces of
one update (the policy's forward at the sampling temperature, the gradient norm, the minibatch stats
summed over the processes with the non-finite check that must come before `optimizer.step()`).

Split from `rl.ppo` so the trainer keeps the order of a step and this module the arithmetic of an
update. Shapes: b rows of the global batch, n sequence, v vocab; action tensors are (b, n-1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from self_rewarding_lm_pytorch.core.logprobs import token_logprobs
from self_rewarding_lm_pytorch.core.ppo_losses import masked_mean
from self_rewarding_lm_pytorch.rl.global_batch import minibatch_share
from self_rewarding_lm_pytorch.rl.value_head import token_entropy
from self_rewarding_lm_pytorch.training.faults import NonFiniteLossError
from self_rewarding_lm_pytorch.training.sharding import ShardedTraining

__all__ = [
    "global_minibatches",
    "gradient_norm",
    "minibatch_shares",
    "sampling_logprobs",
    "summed_stats",
    "trim_padding",
]


def sampling_logprobs(logits: Tensor, input_ids: Tensor, temperature: float) -> Tensor:
    """(b, n-1) log-probs under the sampling distribution softmax(logits / temperature).

    Divided in fp32: a bf16 quotient would round differently for the policy (whose prepared forward
    returns fp32 logits) and the reference (bf16 under autocast), and KL would not start at 0.
    """
    return token_logprobs(logits.float() / temperature, input_ids)


def global_minibatches(
    batch: dict[str, Tensor], *, epochs: int, size: int, generator: torch.Generator, accelerator: Any
) -> Iterator[tuple[dict[str, Tensor], Tensor]]:
    """`epochs` passes over shuffled global minibatches of `size` rows of `batch` (every process's rows,
    held by every process): yields this process's share of each and the minibatch's trained-token count
    over every process. Every process draws the same order from `generator` (seeded alike everywhere)."""
    b = batch["input_ids"].shape[0]
    for _ in range(epochs):
        order = torch.randperm(b, generator=generator).to(batch["input_ids"].device)
        for start in range(0, b, size):
            rows = order[start : start + size]
            # A minibatch with no scored rollout has nothing to learn from, yet an optimizer step would
            # still move the weights (Adam's momentum). Every process holds the same rows, so all skip it.
            total_tokens = batch["mask"][rows].sum().float()
            if not int(total_tokens):
                continue
            mine, is_placeholder = minibatch_share(rows, accelerator.process_index, accelerator.num_processes)
            mb = {k: v[mine] for k, v in batch.items()}
            if is_placeholder:  # nothing of this minibatch here: a forward and backward that count nothing
                mb["mask"] = torch.zeros_like(mb["mask"])
            yield mb, total_tokens


def trim_padding(mb: dict[str, Tensor]) -> dict[str, Tensor]:
    """`mb` without the columns past its longest row (right padding: they hold only pad)."""
    length = int(mb["action_mask"].any(0).nonzero().max()) + 2
    return {k: v[:, :length] if k == "input_ids" else v[:, : length - 1] for k, v in mb.items()}


def gradient_norm(
    model: nn.Module, params: Any, sharded: ShardedTraining | None, accelerator: Any, max_grad_norm: float | None
) -> Tensor:
    """The gradients' total norm, clipped to `max_grad_norm` on the way (None: not clipped)."""
    if sharded is not None:  # the norm over every shard; an infinite bound clips nothing
        return sharded.clip_grad_norm(params, max_grad_norm or math.inf)
    if max_grad_norm is not None:
        return accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


@torch.no_grad()
def minibatch_shares(
    losses: dict[str, Tensor],
    logits: Tensor,
    logprobs: Tensor,
    values: Tensor,
    mb: dict[str, Tensor],
    total_tokens: Tensor,
) -> dict[str, Tensor]:
    """This process's share of each minibatch stat (token means divide by the global `total_tokens`, so
    the shares summed over the processes are the minibatch's means); `losses` are shares already."""
    mask, log_ratio = mb["mask"], logprobs - mb["old_logprobs"]

    def share(x: Tensor) -> Tensor:
        return masked_mean(x, mask, count=total_tokens)

    return {
        "ppo/loss/policy": losses["policy"],
        "ppo/loss/value": losses["value"],
        "ppo/loss/total": losses["total"],
        "ppo/policy/entropy": share(token_entropy(logits[:, :-1])),
        "ppo/policy/approxkl": 0.5 * share(log_ratio**2),
        "ppo/policy/policykl": share(-log_ratio),
        "ppo/policy/clipfrac": losses["policy_clipfrac"],
        "ppo/val/vpred": share(values),
        "ppo/val/error": share((values - mb["returns"]) ** 2),
        "ppo/val/clipfrac": losses["value_clipfrac"],
    }


def summed_stats(
    shares: dict[str, Tensor],
    grad_norm: Tensor,
    *,
    total: Callable[[Tensor], Tensor],
    device: Any,
    optimizer: Any,
    step: int,
) -> dict[str, Tensor]:
    """The minibatch stats (each process holds its share of the global token means) summed over the
    processes by `total`, in one reduction that also refuses a NaN/inf loss or gradient: it must be
    caught before optimizer.step() applies it (afterwards every weight and checkpoint carries it), and
    every process raises at the same minibatch (of PPO step `step`), with the gradients cleared."""
    grad_is_bad = ~torch.isfinite(torch.as_tensor(grad_norm).float())
    totals = total(torch.stack([v.detach().float() for v in shares.values()] + [grad_is_bad.float()]).to(device))
    loss = totals[list(shares).index("ppo/loss/total")]
    if not bool(torch.isfinite(loss)) or bool(totals[-1] > 0):
        optimizer.zero_grad(set_to_none=True)
        raise NonFiniteLossError(
            f"ppo: non-finite loss or gradient in PPO step {step} (loss {loss.item()}); "
            "the update was not applied and the checkpoints written so far are intact"
        )
    return dict(zip(shares, totals, strict=False))
