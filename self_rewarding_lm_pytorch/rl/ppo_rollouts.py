"""The rollout half of PPO: sampling the responses, the rollouts and their scores as tensors, their
per-token rewards and advantages, and a step's stats about them.

Split from `rl.ppo` so the trainer holds the order of a step (rollout forward, rewards, optimise) and
this module the batch arithmetic before the update: scores are checked (finite, or NaN for an
unscored rollout, which is masked out rather than scored 0), normalised and clipped as configured;
advantages are GAE's, whitened (if configured) over every process's trained tokens.

Shapes: b rollouts, n sequence (query + response); action tensors are (b, n-1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from self_rewarding_lm_pytorch.core.ppo_losses import gae_advantages, kl_penalty, whiten
from self_rewarding_lm_pytorch.rl.global_batch import global_means
from self_rewarding_lm_pytorch.rl.ppo_config import PPOConfig
from self_rewarding_lm_pytorch.rl.value_head import RunningMoments, assemble_rollouts, per_token_rewards

__all__ = [
    "first_global_row",
    "gather_scored",
    "process_scores",
    "rewards_and_advantages",
    "rollout_batch",
    "rollout_stats",
    "rollout_tensors",
    "sample_responses",
    "score_values",
]


def sample_responses(
    transformer: Any, queries: Sequence[Tensor], *, return_prompt: bool = False, **sample_kwargs
) -> list[Tensor]:
    """One response per query (or `num_samples`, prompt-major) from `sampling.sample`: 1-D tensors on CPU
    (as `sample` returns them) holding the generated tokens up to and including EOS, no padding (or
    prompt + response with `return_prompt=True`)."""
    from self_rewarding_lm_pytorch.core.sampling import sample

    out = sample(transformer, list(queries), **sample_kwargs)
    rows = [ids[mask] for ids, mask in zip(out.response_ids, out.response_mask, strict=True)]
    if return_prompt:
        rows = [torch.cat([queries[int(p)].cpu(), r]) for p, r in zip(out.prompt_index, rows, strict=True)]
    return rows


def first_global_row(num_rows: int, accelerator: Any) -> int:
    """The global index of this process's first of `num_rows` rows: the rows of the processes before it
    (a collective under several processes)."""
    if accelerator.num_processes == 1:
        return 0
    counts = accelerator.gather(torch.tensor([num_rows], device=accelerator.device))
    return int(counts[: accelerator.process_index].sum())


def rollout_tensors(
    queries: Sequence[Any], responses: Sequence[Any], *, tokenizer: Any, max_seq_len: int | None, device: Any
) -> tuple[Tensor, Tensor]:
    """`input_ids` (b, n) and `action_mask` (b, n-1) of query + response, right-padded, on `device`."""
    input_ids, action_mask = assemble_rollouts(queries, responses, pad_id=tokenizer.pad_id, eos_id=tokenizer.eos_id)
    if max_seq_len and input_ids.shape[1] > max_seq_len:
        raise ValueError(
            f"query + response is {input_ids.shape[1]} tokens, more than the model's max_seq_len {max_seq_len}"
        )
    return input_ids.to(device), action_mask.to(device)


def rollout_batch(
    queries: Sequence[Any],
    responses: Sequence[Any],
    scores: Sequence[Any] | Tensor,
    *,
    tokenizer: Any,
    max_seq_len: int | None,
    config: PPOConfig,
    moments: RunningMoments,
    accelerator: Any,
) -> dict[str, Tensor]:
    """The rollouts as tensors on the device: `input_ids` (b, n), `action_mask` (b, n-1), the scores
    (b,: `raw_scores`, processed `scores`, `scored`) and `mask` (b, n-1), the scored rollouts' actions."""
    input_ids, action_mask = rollout_tensors(
        queries, responses, tokenizer=tokenizer, max_seq_len=max_seq_len, device=accelerator.device
    )
    raw = torch.tensor(score_values(scores, input_ids.shape[0]), dtype=torch.float32, device=accelerator.device)
    processed, scored = process_scores(raw, config, moments, accelerator)
    return dict(
        input_ids=input_ids,
        action_mask=action_mask,
        raw_scores=raw,
        scores=processed,
        scored=scored,
        mask=action_mask & scored[:, None],
    )


def score_values(scores: Sequence[Any] | Tensor, b: int) -> list[float]:
    """`scores` as floats, one per rollout: scalars (or one-element tensors), finite or NaN (unscored)."""
    values = []
    for i, s in enumerate(scores):
        if isinstance(s, Tensor):
            if s.numel() != 1:
                raise ValueError(f"score {i} must be a scalar, got a tensor of shape {tuple(s.shape)}")
            s = s.item()
        values.append(float(s))
    if len(values) != b:
        raise ValueError(f"got {len(values)} scores for {b} rollouts")
    if any(math.isinf(v) for v in values):
        raise ValueError(f"scores must be finite, or NaN for an unscored rollout: {values}")
    return values


def process_scores(raw: Tensor, config: PPOConfig, moments: RunningMoments, accelerator: Any) -> tuple[Tensor, Tensor]:
    """(processed, scored) (b,) from `raw` (b,): normalised and/or clipped as configured and 0 where the
    score is NaN; `scored` is False there. Updates `moments` with every process's scored values."""
    scored = ~raw.isnan()
    processed = torch.where(scored, raw, torch.zeros_like(raw))
    if config.reward_norm:
        # every process's scores, in rank order: all processes hold the same running moments
        moments.update(gather_scored(raw, accelerator))
        processed = (processed - moments.mean) / max(moments.std, 1e-8)
    if config.reward_clip is not None:
        processed = processed.clamp(-config.reward_clip, config.reward_clip)
    return torch.where(scored, processed, torch.zeros_like(processed)), scored


def gather_scored(raw: Tensor, accelerator: Any) -> Tensor:
    """The scored (non-NaN) values of `raw` (b,) from every process, concatenated in rank order."""
    if accelerator.num_processes == 1:
        return raw[~raw.isnan()]
    sizes = accelerator.gather(torch.tensor([raw.numel()], device=raw.device))
    padded = torch.full((int(sizes.max()),), math.nan, dtype=raw.dtype, device=raw.device)
    padded[: raw.numel()] = raw
    everything = accelerator.gather(padded)  # NaN marks padding and unscored rollouts alike
    return everything[~everything.isnan()]


def rewards_and_advantages(
    r: dict[str, Tensor],
    config: PPOConfig,
    kl_coef: float,
    *,
    sum_over_processes: Callable[[Tensor], Tensor] | None,
) -> tuple[dict[str, Tensor], int]:
    """The per-token KL, non-score rewards, advantages and returns of the rollouts `r` (after their
    forward: `old_logprobs`, `ref_logprobs`, `old_values`), and how many rollouts of every process are
    scored. `sum_over_processes` is None with one process."""
    train_mask = r["mask"]
    kl = kl_penalty(r["old_logprobs"], r["ref_logprobs"], config.kl_estimator)
    rewards, non_score = per_token_rewards(kl, r["scores"], r["action_mask"], kl_coef)
    advantages, returns = gae_advantages(rewards, r["old_values"], train_mask, config.gamma, config.lam)
    counts = torch.stack([r["scored"].sum(), train_mask.sum()])
    if sum_over_processes is not None:  # over every process's rollouts
        counts = sum_over_processes(counts)
    num_scored, num_train_tokens = int(counts[0]), int(counts[1])
    if config.whiten_advantages and num_train_tokens >= 2:
        advantages = whiten(advantages, train_mask, sum_over_processes=sum_over_processes)
    return dict(kl=kl, non_score=non_score, advantages=advantages, returns=returns), num_scored


def rollout_stats(r: dict[str, Tensor], *, sum_over_processes: Callable[[Tensor], Tensor] | None) -> dict[str, Tensor]:
    """The step's rollout stats (TRL's names): means over every process's scored rollouts (per rollout)
    or their trained tokens (per token), and the count of unscored rollouts."""
    train_mask, scored, raw_scores = r["mask"], r["scored"], r["raw_scores"]
    per_row = {
        "objective/kl": (r["kl"] * train_mask).sum(-1),
        "objective/entropy": (-r["old_logprobs"] * train_mask).sum(-1),
        "ppo/mean_scores": torch.where(scored, raw_scores, torch.zeros_like(raw_scores)),
        "ppo/mean_processed_scores": r["scores"],
        "ppo/mean_non_score_reward": r["non_score"].sum(-1),
        "tokens/responses_len_mean": train_mask.float().sum(-1),
    }
    per_token = {
        "ppo/returns/mean": r["returns"],
        "ppo/val/mean": r["old_values"],
        "ppo/policy/advantages_mean": r["advantages"],
    }
    unscored = {"ppo/num_unscored": (~scored).sum()}
    return global_means(per_row, scored, per_token, train_mask, unscored, sum_over_processes=sum_over_processes)
