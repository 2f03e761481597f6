"""Pure loss functions: SFT, the DPO family (with DPOP, SimPO, ORPO, APO, NCA), SPIN, ranking, and PPO parts.

Shapes: b batch, n sequence, v vocab, k ranked candidates per prompt.

Every preference loss takes per-sequence log-probs (b,) (see `logprobs.sequence_logprobs`) and
returns unreduced per-example losses plus detached implicit rewards; the caller reduces.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from beartype import beartype
from einops import rearrange
from torch import Tensor

from self_rewarding_lm_pytorch.core.logprobs import sequence_logprobs

__all__ = [
    "DPO_LOSS_TYPES",
    "LENGTH_NORMALISED_LOSS_TYPES",
    "REFERENCE_FREE_LOSS_TYPES",
    "AdaptiveKLController",
    "FixedKLController",
    "apo_loss",
    "check_dpo_loss_args",
    "dpo_loss",
    "dpop_loss",
    "gae_advantages",
    "kl_penalty",
    "masked_mean",
    "nca_loss",
    "orpo_loss",
    "ppo_policy_loss",
    "ppo_value_loss",
    "ranking_loss",
    "sft_loss",
    "simpo_loss",
    "spin_loss",
    "whiten",
]

# Losses that compare the policy with a reference; the rest ("simpo", "orpo") never need one.
REFERENCE_LOSS_TYPES = ("sigmoid", "robust", "ipo", "hinge", "dpop", "apo_zero", "apo_down", "nca")
REFERENCE_FREE_LOSS_TYPES = ("simpo", "orpo")
DPO_LOSS_TYPES = REFERENCE_LOSS_TYPES + REFERENCE_FREE_LOSS_TYPES
# Losses on per-token means of the log-probs (their papers length-normalise); they need token counts.
LENGTH_NORMALISED_LOSS_TYPES = ("simpo", "orpo")
_SMOOTHED_LOSS_TYPES = ("sigmoid", "robust")


@beartype
def sft_loss(logits: Tensor, input_ids: Tensor, is_response: Tensor) -> Tensor:
    """(b,) mean next-token cross-entropy over the response tokens only (the prompt is not learned)."""
    return -sequence_logprobs(logits, input_ids, is_response, reduction="mean")


def _check_same_shape(**tensors: Tensor):
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"inputs must have the same shape, got {shapes}")


def check_dpo_loss_args(
    *,
    beta: float | int = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float | int = 0.0,
    dpop_lambda: float | int = 50.0,
    simpo_gamma: float | int = 0.5,
    orpo_lambda: float | int = 0.1,
) -> None:
    """Raise ValueError for settings `dpo_loss` cannot use; trainers and stages call it at construction.

    A parameter of another loss (say `simpo_gamma` with "sigmoid") is ignored, not an error, so one
    config can sweep `loss_type`.
    """
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {DPO_LOSS_TYPES}, got {loss_type!r}")
    if not (beta > 0 and math.isfinite(beta)):
        raise ValueError(f"beta must be > 0, got {beta}")
    for name, value in (("dpop_lambda", dpop_lambda), ("simpo_gamma", simpo_gamma), ("orpo_lambda", orpo_lambda)):
        if not (value >= 0 and math.isfinite(value)):  # NaN fails too
            raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    eps = label_smoothing
    if loss_type == "sigmoid" and not 0.0 <= eps <= 0.5:
        raise ValueError(f"label_smoothing for cDPO must be in [0, 0.5], got {eps}")
    if loss_type == "robust" and not 0.0 <= eps < 0.5:
        raise ValueError(f"label_smoothing for robust DPO must be in [0, 0.5), got {eps}")
    if loss_type not in _SMOOTHED_LOSS_TYPES and eps != 0.0:
        raise ValueError(f"label_smoothing is not defined for loss_type={loss_type!r}; got {eps}")


@beartype
def dpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor | None = None,
    ref_rejected: Tensor | None = None,
    *,
    beta: float | int = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float | int = 0.0,
    dpop_lambda: float | int = 50.0,
    simpo_gamma: float | int = 0.5,
    orpo_lambda: float | int = 0.1,
    chosen_tokens: Tensor | None = None,
    rejected_tokens: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """DPO (Rafailov et al. 2023, arXiv 2305.18290, Eq. 7) and variants -> (losses, chosen_rewards, rejected_rewards).

    Inputs are summed response log-probs (b,). With r_c = policy_chosen - ref_chosen, r_r likewise,
    h = r_c - r_r and eps = label_smoothing:
    - "sigmoid": -(1-eps) log s(beta h) - eps log s(-beta h). eps = 0 is the paper; eps > 0 is
      conservative DPO, cDPO (Mitchell 2023, "A note on DPO with noisy preferences"), the
      cross-entropy against labels flipped with probability eps. 0 <= eps <= 0.5.
    - "robust": rDPO (Chowdhury et al. 2024, "Provably Robust DPO", arXiv 2403.00409), the unbiased loss under label
      noise eps: ((1-eps)(-log s(beta h)) - eps(-log s(-beta h))) / (1 - 2 eps). 0 <= eps < 0.5.
    - "ipo": IPO (Azar et al. 2023, arXiv 2310.12036), (h - 1/(2 beta))^2 with beta as tau.
    - "hinge": SLiC-HF's calibration loss (Zhao et al. 2023, arXiv 2305.10425), max(0, 1 - beta h).
    - "dpop", "simpo", "orpo", "apo_zero", "apo_down", "nca": see the functions named after them.
    "simpo" and "orpo" are reference-free (the refs may be None) and length-normalised: they need
    `chosen_tokens` / `rejected_tokens`, the (b,) response token counts behind the sums.
    Implicit rewards (beta * (policy - ref) unless the loss says otherwise) are detached: logged, not learned.
    """
    check_dpo_loss_args(
        beta=beta,
        loss_type=loss_type,
        label_smoothing=label_smoothing,
        dpop_lambda=dpop_lambda,
        simpo_gamma=simpo_gamma,
        orpo_lambda=orpo_lambda,
    )
    _check_same_shape(policy_chosen=policy_chosen, policy_rejected=policy_rejected)
    if loss_type in LENGTH_NORMALISED_LOSS_TYPES:
        if chosen_tokens is None or rejected_tokens is None:
            raise ValueError(f"loss_type={loss_type!r} averages over tokens: pass chosen_tokens and rejected_tokens")
        _check_same_shape(policy_chosen=policy_chosen, chosen_tokens=chosen_tokens, rejected_tokens=rejected_tokens)
        # per-token means, as both papers define them (a row without tokens counts as one token, like logprobs)
        mean_chosen = policy_chosen / chosen_tokens.clamp(min=1).to(policy_chosen.dtype)
        mean_rejected = policy_rejected / rejected_tokens.clamp(min=1).to(policy_rejected.dtype)
        if loss_type == "simpo":
            return simpo_loss(mean_chosen, mean_rejected, beta=beta, gamma=simpo_gamma)
        return orpo_loss(mean_chosen, mean_rejected, orpo_lambda=orpo_lambda)
    if ref_chosen is None or ref_rejected is None:
        raise ValueError(f"loss_type={loss_type!r} compares with a reference: pass ref_chosen and ref_rejected")
    _check_same_shape(policy_chosen=policy_chosen, ref_chosen=ref_chosen, ref_rejected=ref_rejected)
    r_c, r_r = policy_chosen - ref_chosen, policy_rejected - ref_rejected
    rewards = (beta * r_c).detach(), (beta * r_r).detach()
    h, eps = r_c - r_r, label_smoothing
    if loss_type == "sigmoid":
        losses = -(1 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)
    elif loss_type == "robust":
        losses = (-(1 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)) / (1 - 2 * eps)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * h)
    elif loss_type == "dpop":
        losses = dpop_loss(r_c, r_r, beta=beta, dpop_lambda=dpop_lambda)
    elif loss_type == "nca":
        losses = nca_loss(r_c, r_r, beta=beta)
    else:
        losses = apo_loss(r_c, r_r, beta=beta, anchor="zero" if loss_type == "apo_zero" else "down")
    return losses, *rewards


def dpop_loss(chosen_logratio: Tensor, rejected_logratio: Tensor, *, beta: float | int, dpop_lambda: float | int):
    """(b,) DPO-Positive (Pal et al. 2024, "Smaug", arXiv 2402.13228, Eq. 3), from r = policy - ref per response:
    -log s(beta (r_c - r_r - lambda max(0, -r_c))). The penalty is zero while the chosen response is at
    least as likely as under the reference, and grows as DPO's displacement pushes it below."""
    penalty = torch.relu(-chosen_logratio)  # max(0, log ref(y_c) - log policy(y_c))
    return -F.logsigmoid(beta * (chosen_logratio - rejected_logratio - dpop_lambda * penalty))


def apo_loss(chosen_logratio: Tensor, rejected_logratio: Tensor, *, beta: float | int, anchor: str):
    """(b,) Anchored Preference Optimization (D'Oosterlinck et al. 2024, arXiv 2408.06266), from r = policy - ref:
    "zero" (Eq. 7): 1 - s(beta r_c) + s(beta r_r), raise the chosen and lower the rejected, each on its own
    (for chosen answers better than the model's own); "down" (Eq. 8): s(beta r_c) + 1 - s(beta (r_c - r_r)),
    lower both, the rejected more (for chosen answers worse than the model's own). The constant 1 keeps
    the loss in [0, 2]; the paper's form omits it (same gradients)."""
    if anchor == "zero":
        return 1 - torch.sigmoid(beta * chosen_logratio) + torch.sigmoid(beta * rejected_logratio)
    if anchor == "down":
        return torch.sigmoid(beta * chosen_logratio) + 1 - torch.sigmoid(beta * (chosen_logratio - rejected_logratio))
    raise ValueError(f"anchor must be 'zero' or 'down', got {anchor!r}")


def nca_loss(chosen_logratio: Tensor, rejected_logratio: Tensor, *, beta: float | int):
    """(b,) Noise-contrastive alignment, pairwise form (Chen et al. 2024, arXiv 2402.05369, Sec. 4, K = 2), from
    r = policy - ref: -log s(beta r_c) - 0.5 log s(-beta r_c) - 0.5 log s(-beta r_r). Each response's own
    likelihood ratio is scored against an absolute 0 (not only their difference, as in DPO), so the chosen
    response is not lowered as long as it is pushed up more than the noise term pulls it down."""
    return (
        -F.logsigmoid(beta * chosen_logratio)
        - 0.5 * F.logsigmoid(-beta * chosen_logratio)
        - 0.5 * F.logsigmoid(-beta * rejected_logratio)
    )


def simpo_loss(
    mean_chosen: Tensor, mean_rejected: Tensor, *, beta: float | int, gamma: float | int
) -> tuple[Tensor, Tensor, Tensor]:
    """SimPO (Meng et al. 2024, arXiv 2405.14734, Eq. 6) -> (losses, rewards_c, rewards_r), reference-free:
    -log s(beta m_c - beta m_r - gamma) with m the per-token mean log-prob; the rewards beta m are its
    implicit rewards (Eq. 4). The paper's beta is 2-10 and gamma 0.3-1.6 (gamma / beta about 0.5)."""
    reward_c, reward_r = beta * mean_chosen, beta * mean_rejected
    return -F.logsigmoid(reward_c - reward_r - gamma), reward_c.detach(), reward_r.detach()


def orpo_loss(mean_chosen: Tensor, mean_rejected: Tensor, *, orpo_lambda: float | int) -> tuple[Tensor, Tensor, Tensor]:
    """ORPO (Hong et al. 2024, arXiv 2403.07691, Eq. 6-7) -> (losses, log_odds_c, log_odds_r), reference-free:
    -m_c + lambda (-log s(log odds(y_c) - log odds(y_r))), where m is the per-token mean log-prob,
    P = exp(m) and odds = P / (1 - P); -m_c is the chosen response's NLL (the paper's L_SFT). The log
    odds stand in for implicit rewards (their difference is what the sigmoid sees)."""
    # m = 0 (P = 1) has infinite odds: stop just short of it, where the gradient is already ~0.
    m_c, m_r = mean_chosen.clamp(max=-1e-6), mean_rejected.clamp(max=-1e-6)
    log_odds_c = m_c - torch.log(-torch.expm1(m_c))  # log(P / (1 - P)), expm1 exact for P near 1
    log_odds_r = m_r - torch.log(-torch.expm1(m_r))
    losses = -mean_chosen - orpo_lambda * F.logsigmoid(log_odds_c - log_odds_r)
    return losses, log_odds_c.detach(), log_odds_r.detach()


@beartype
def spin_loss(
    policy_real: Tensor,
    policy_generated: Tensor,
    ref_real: Tensor,
    ref_generated: Tensor,
    *,
    lambda_: float | int = 0.1,
) -> tuple[Tensor, Tensor, Tensor]:
    """SPIN (Chen et al. 2024, arXiv 2401.01335, its loss with the logistic l(t) = log(1 + e^-t)): DPO with
    chosen = the real SFT response, rejected = the previous iterate's sample, reference = the previous iterate,
    beta = lambda."""
    return dpo_loss(policy_real, policy_generated, ref_real, ref_generated, beta=lambda_, loss_type="sigmoid")


@beartype
def ranking_loss(rewards: Tensor, mask: Tensor | None = None) -> Tensor:
    """(b,) multinomial ranking loss (Ouyang et al. 2022, arXiv 2203.02155, Eq. 1): the mean over the
    C(K,2) pairs i < j of real ranks of -log s(r_i - r_j), with `rewards` (b, k) best first.

    `mask` (b, k) is True for real ranks; every row needs at least 2.
    """
    if rewards.ndim != 2:
        raise ValueError(f"rewards must be (b, k) best first, got shape {tuple(rewards.shape)}")
    if mask is None:
        mask = torch.ones_like(rewards, dtype=torch.bool)
    if mask.shape != rewards.shape or mask.dtype != torch.bool:
        raise ValueError(
            f"mask must be a bool tensor of shape {tuple(rewards.shape)}, got {mask.dtype} {tuple(mask.shape)}"
        )
    if bool((mask.sum(dim=-1) < 2).any()):
        raise ValueError("every row of the ranking loss needs at least 2 real ranks")
    k = rewards.shape[-1]
    diff = rearrange(rewards, "b i -> b i 1") - rearrange(rewards, "b j -> b 1 j")  # r_i - r_j
    better_first = torch.ones(k, k, dtype=torch.bool, device=rewards.device).triu(diagonal=1)  # i < j: i ranked better
    pair_mask = better_first & rearrange(mask, "b i -> b i 1") & rearrange(mask, "b j -> b 1 j")
    # zero the padded pairs before logsigmoid: padded rewards may be anything, even inf
    safe = torch.where(pair_mask, diff, torch.zeros_like(diff))
    pair_losses = torch.where(pair_mask, -F.logsigmoid(safe), torch.zeros_like(diff))
    return pair_losses.sum(dim=(-1, -2)) / pair_mask.sum(dim=(-1, -2)).to(rewards.dtype)


# --- PPO parts (Ziegler et al. 2019, arXiv 1909.08593; Stiennon et al. 2020), per token over (b, n) ---


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
    _check_same_shape(rewards=rewards, values=values, mask=mask)
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
    _check_same_shape(logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages, mask=mask)
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
    _check_same_shape(values=values, old_values=old_values, returns=returns, mask=mask)
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
    _check_same_shape(logprobs=logprobs, ref_logprobs=ref_logprobs)
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
