"""PPO's parts (Ziegler et al. 2019, arXiv 1909.08593; Stiennon et al. 2020), per token over (b, n).

Masked means and whitening, generalised advantage estimates, the clipped policy and value losses,
the per-token KL estimate and the KL coefficient controllers. Unlike the sequence-level losses in
`losses`, these work on per-token tensors and the policy and value losses reduce to token means
themselves: `total_tokens` / `count` make that mean a process's share of the global one when a
batch is split across processes (`rl/global_batch.py`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from beartype import beartype
from torch import Tensor

from self_rewarding_lm_pytorch.core.shape_checks import check_same_shape

__all__ = [
    "AdaptiveKLController",
    "FixedKLController",
    "gae_advantages",
    "kl_penalty",
    "masked_mean",
    "ppo_policy_loss",
    "ppo_value_loss",
    "whiten",
]


@beartype
def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None, *, count: Tensor | None = None) -> Tensor:
    """Mean of `values` where `mask` is True (0 when nothing is masked in).

    `count` (with `dim=None`): divide the masked sum by this count instead of the mask's own. Given the
    count over every process's shard of a batch, each process gets its share of the global mean, and
    the shares summed over the processes are that mean (`count=mask.sum()` is the plain masked mean).
    """
    mask = mask.to(values.dtype)
    if count is not None:
        if dim is not None:
            raise ValueError("masked_mean: count= is a total over the whole mask, so dim must be None")
        return (values * mask).sum() / count.clamp(min=1)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim=dim) / mask.sum(dim=dim).clamp(min=1)


@beartype
def whiten(
    values: Tensor,
    mask: Tensor,
    shift_mean: bool = True,
    eps: float | int = 1e-8,
    *,
    sum_over_processes: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Normalise to unit variance (Bessel-corrected) over the masked entries, and zero mean when
    `shift_mean`; masked-out entries come back as 0.

    `sum_over_processes` (e.g. an all-reduce sum): `values` is one process's shard of a batch, and the
    mean and variance are those of every shard's masked entries together, so each shard comes back
    exactly as its rows of the whitened concatenation. Two reductions: (sum, count), then the squared
    deviations from the global mean (two passes, as one process computes them). Without it (one
    process) the arithmetic is the plain two-pass one.
    """
    total = sum_over_processes or _unchanged
    maskf = mask.to(values.dtype)
    sum_and_count = total(torch.stack([(values * maskf).sum(), maskf.sum()]))
    count = sum_and_count[1]
    if int(count) < 2:
        raise ValueError(f"whiten needs at least 2 masked-in values, got {int(count)}")
    mean = sum_and_count[0] / count
    var = total(((values - mean) ** 2 * maskf).sum()) / count * count / (count - 1)
    out = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(mask, out, torch.zeros_like(out))


def _unchanged(x: Tensor) -> Tensor:
    return x


@beartype
def gae_advantages(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float | int = 1.0, lam: float | int = 0.95
) -> tuple[Tensor, Tensor]:
    """GAE (Schulman et al. 2016, arXiv 1506.02438, Eq. 16) -> (advantages, returns), both (b, n), detached.

    delta_t = r_t + gamma V_{t+1} - V_t and A_t = delta_t + gamma lam A_{t+1}; the episode ends at the
    first masked-out token after t (V and A beyond it count as 0). returns = A + V.
    """
    check_same_shape(rewards=rewards, values=values, mask=mask)
    rewards, values = rewards.detach(), values.detach()
    maskf = mask.to(values.dtype)
    n = rewards.shape[1]
    next_value = torch.zeros_like(values[:, 0])
    next_adv = torch.zeros_like(values[:, 0])
    advantages = torch.zeros_like(values)
    for t in reversed(range(n)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv = (delta + gamma * lam * next_adv) * maskf[:, t]
        advantages[:, t] = adv
        # a masked-out token ends the episode for the token before it
        next_value, next_adv = values[:, t] * maskf[:, t], adv
    returns = (advantages + values) * maskf
    return advantages, returns


@beartype
def ppo_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    cliprange: float | int = 0.2,
    *,
    total_tokens: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """PPO clipped surrogate (Schulman et al. 2017, arXiv 1707.06347, Eq. 7), negated -> (loss, clipfrac) scalars,
    masked means over tokens; clipfrac is the fraction of tokens where the clipped term won.
    `total_tokens`: the minibatch's token count over every process (see `masked_mean`'s `count`), which
    makes both this process's share of the global token means."""
    check_same_shape(logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages, mask=mask)
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - cliprange, 1 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask, count=total_tokens)
    clipfrac = masked_mean((clipped > unclipped).to(logprobs.dtype), mask, count=total_tokens).detach()
    return loss, clipfrac


@beartype
def ppo_value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    cliprange_value: float | int = 0.2,
    *,
    total_tokens: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Clipped value loss (as in OpenAI baselines / TRL) -> (loss, clipfrac) scalars:
    0.5 * masked mean of max((V - R)^2, (V_old + clip(V - V_old, +-c) - R)^2). `total_tokens` as in
    `ppo_policy_loss`."""
    check_same_shape(values=values, old_values=old_values, returns=returns, mask=mask)
    clipped_values = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    unclipped_err = (values - returns) ** 2
    clipped_err = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_err, clipped_err), mask, count=total_tokens)
    clipfrac = masked_mean((clipped_err > unclipped_err).to(values.dtype), mask, count=total_tokens).detach()
    return loss, clipfrac


@beartype
def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, estimator: str = "k1") -> Tensor:
    """Per-token estimate of KL(policy || ref) from log-probs of tokens sampled from the policy
    (Schulman 2020, "Approximating KL Divergence"): k1 = log p - log q (unbiased, can be negative),
    k3 = (q/p - 1) - log(q/p) (unbiased, always >= 0)."""
    check_same_shape(logprobs=logprobs, ref_logprobs=ref_logprobs)
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"estimator must be 'k1' or 'k3', got {estimator!r}")


class AdaptiveKLController:
    """Adaptive KL coefficient (Ziegler et al. 2019, arXiv 1909.08593, Sec. 2.2):
    e = clip(KL / target - 1, -0.2, 0.2); beta <- beta * (1 + e * n_steps / horizon)."""

    @beartype
    def __init__(self, init_kl_coef: float | int, target: float | int, horizon: float | int):
        if init_kl_coef < 0 or target <= 0 or horizon <= 0:
            raise ValueError(
                f"need init_kl_coef >= 0, target > 0, horizon > 0; got {init_kl_coef}, {target}, {horizon}"
            )
        self.value, self.target, self.horizon = float(init_kl_coef), float(target), float(horizon)

    def update(self, current_kl: float | int, n_steps: int) -> float:
        error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value


class FixedKLController:
    """A constant KL coefficient; `update` does nothing (same interface as AdaptiveKLController)."""

    @beartype
    def __init__(self, kl_coef: float | int):
        if kl_coef < 0 or math.isnan(kl_coef):
            raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
        self.value = float(kl_coef)

    def update(self, current_kl: float | int, n_steps: int) -> float:
        return self.value
