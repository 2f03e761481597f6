"""Pure loss functions: SFT, the DPO family's dispatch, SPIN and ranking; PPO's parts re-exported.

Shapes: b batch, n sequence, v vocab, k ranked candidates per prompt.

Every preference loss takes per-sequence log-probs (b,) (see `logprobs.sequence_logprobs`) and
returns unreduced per-example losses plus detached implicit rewards; the caller reduces.

This is where the DPO family is named and chosen: the registry of `loss_type`s, the argument check
trainers run at construction, and `dpo_loss`, which dispatches to each variant's formula. The
variants with a paper of their own (DPOP, APO, NCA, SimPO, ORPO) live in `preference_losses`, PPO's
per-token parts in `ppo_losses`; both are re-exported here, so `core.losses` stays the one import
for every loss.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from beartype import beartype
from einops import rearrange
from torch import Tensor

from self_rewarding_lm_pytorch.core.logprobs import sequence_logprobs
from self_rewarding_lm_pytorch.core.ppo_losses import (
    AdaptiveKLController,
    FixedKLController,
    gae_advantages,
    kl_penalty,
    masked_mean,
    ppo_policy_loss,
    ppo_value_loss,
    whiten,
)
from self_rewarding_lm_pytorch.core.preference_losses import apo_loss, dpop_loss, nca_loss, orpo_loss, simpo_loss
from self_rewarding_lm_pytorch.core.shape_checks import check_same_shape

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
    check_same_shape(policy_chosen=policy_chosen, policy_rejected=policy_rejected)
    if loss_type in LENGTH_NORMALISED_LOSS_TYPES:
        if chosen_tokens is None or rejected_tokens is None:
            raise ValueError(f"loss_type={loss_type!r} averages over tokens: pass chosen_tokens and rejected_tokens")
        check_same_shape(policy_chosen=policy_chosen, chosen_tokens=chosen_tokens, rejected_tokens=rejected_tokens)
        # per-token means, as both papers define them (a row without tokens counts as one token, like logprobs)
        mean_chosen = policy_chosen / chosen_tokens.clamp(min=1).to(policy_chosen.dtype)
        mean_rejected = policy_rejected / rejected_tokens.clamp(min=1).to(policy_rejected.dtype)
        if loss_type == "simpo":
            return simpo_loss(mean_chosen, mean_rejected, beta=beta, gamma=simpo_gamma)
        return orpo_loss(mean_chosen, mean_rejected, orpo_lambda=orpo_lambda)
    if ref_chosen is None or ref_rejected is None:
        raise ValueError(f"loss_type={loss_type!r} compares with a reference: pass ref_chosen and ref_rejected")
    check_same_shape(policy_chosen=policy_chosen, ref_chosen=ref_chosen, ref_rejected=ref_rejected)
    r_c, r_r = policy_chosen - ref_chosen, policy_rejected - ref_rejected
    rewards = (beta * r_c).detach(), (beta * r_r).detach()
    losses = _reference_losses(loss_type, r_c, r_r, beta=beta, eps=label_smoothing, dpop_lambda=dpop_lambda)
    return losses, *rewards


def _reference_losses(
    loss_type: str, r_c: Tensor, r_r: Tensor, *, beta: float | int, eps: float | int, dpop_lambda: float | int
) -> Tensor:
    """(b,) the losses of the reference-based types, from the log-ratios r = policy - ref (see `dpo_loss`)."""
    h = r_c - r_r
    if loss_type == "sigmoid":
        return -(1 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)
    if loss_type == "robust":
        return (-(1 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)) / (1 - 2 * eps)
    if loss_type == "ipo":
        return (h - 1 / (2 * beta)) ** 2
    if loss_type == "hinge":
        return torch.relu(1 - beta * h)
    if loss_type == "dpop":
        return dpop_loss(r_c, r_r, beta=beta, dpop_lambda=dpop_lambda)
    if loss_type == "nca":
        return nca_loss(r_c, r_r, beta=beta)
    return apo_loss(r_c, r_r, beta=beta, anchor="zero" if loss_type == "apo_zero" else "down")


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
