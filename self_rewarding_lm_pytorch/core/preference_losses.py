"""The DPO family's variant formulas, each a pure function of two per-example (b,) inputs.

`losses.dpo_loss` validates its arguments, turns log-probs into what each variant is defined on, and
dispatches here: the reference-based variants (DPOP, APO, NCA) take the log-ratios
r = policy - ref of the chosen and rejected responses; the reference-free ones (SimPO, ORPO) take
per-token mean log-probs. They return unreduced per-example losses (SimPO and ORPO also their
detached implicit rewards); the caller reduces. Kept apart from the dispatch so a new variant is one
function here plus one name in `losses`' registry.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["apo_loss", "dpop_loss", "nca_loss", "orpo_loss", "simpo_loss"]


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
