import math

import pytest
import torch
import torch.nn.functional as F

from self_rewarding_lm_pytorch.core import losses
from self_rewarding_lm_pytorch.core.losses import (
    AdaptiveKLController,
    FixedKLController,
    dpo_loss,
    gae_advantages,
    kl_penalty,
    ranking_loss,
    sft_loss,
    spin_loss,
    whiten,
)

pytestmark = pytest.mark.unit

LOG2 = math.log(2.0)

L1 = math.log1p(math.exp(-1.0))  # -log sigmoid(1) = 0.31326168751822286
L2 = math.log1p(math.exp(-2.0))  # -log sigmoid(2) = 0.12692801104297263


def t(*xs):
    return torch.tensor(xs, dtype=torch.float64)


def test_sft_loss_is_mean_response_cross_entropy():
    """[p0 p1 r0 r1 PAD] = ids [1, 0, 1, 0, 1], vocabulary of 2; logits row t predicts token t+1 with
    probability 1/2, 1/4, 1/8, 1/16. The response r0, r1 has log-probs log(1/4), log(1/8), so the
    mean cross-entropy is (2 + 3) log 2 / 2 = 2.5 log 2 (the prompt and PAD are not learned)."""
    ids = torch.tensor([[1, 0, 1, 0, 1]])
    is_response = torch.tensor([[False, False, True, True, False]])
    logits = torch.zeros(1, 5, 2)
    for row, q in enumerate([1 / 2, 1 / 4, 1 / 8, 1 / 16]):
        target = ids[0, row + 1]
        logits[0, row, target], logits[0, row, 1 - target] = math.log(q), math.log(1 - q)
    assert sft_loss(logits, ids, is_response).item() == pytest.approx(2.5 * LOG2, abs=1e-5)


@pytest.mark.parametrize("loss_type", ["sigmoid", "robust"])
def test_dpo_policy_equal_to_reference_gives_log2(loss_type):
    """h = 0 -> -log s(0) = log 2 for the paper loss; rDPO at eps = 0 is the paper loss."""
    x = t(-3.0, -10.0)
    out, rc, rr = dpo_loss(x, x - 1, x, x - 1, loss_type=loss_type)
    torch.testing.assert_close(out, t(LOG2, LOG2))
    assert rc.abs().max() == 0 and rr.abs().max() == 0


# policy_chosen -1, policy_rejected -3, ref -2 and -2: h = (-1 - -2) - (-3 - -2) = 2.
PC, PR, RC, RR = t(-1.0), t(-3.0), t(-2.0), t(-2.0)


@pytest.mark.parametrize(
    "loss_type, beta, eps, expected",
    [
        # beta h = 1 -> log(1 + e^-1)
        ("sigmoid", 0.5, 0.0, L1),
        # cDPO: 0.9 log(1+e^-1) + 0.1 log(1+e^1), and log(1+e) = 1 + log(1+e^-1) -> L1 + 0.1
        ("sigmoid", 0.5, 0.1, L1 + 0.1),
        # rDPO: (0.9 L1 - 0.1 (L1 + 1)) / 0.8 = L1 - 0.1/0.8 = L1 - 0.125
        ("robust", 0.5, 0.1, L1 - 0.125),
        # IPO: (h - 1/(2 beta))^2: beta 1 -> (2 - 0.5)^2 = 2.25; beta 0.25 -> (2 - 2)^2 = 0
        ("ipo", 1.0, 0.0, 2.25),
        ("ipo", 0.25, 0.0, 0.0),
        # hinge: max(0, 1 - beta h): beta 0.25 -> 0.5; beta 1 -> 0
        ("hinge", 0.25, 0.0, 0.5),
        ("hinge", 1.0, 0.0, 0.0),
    ],
)
def test_dpo_family_hand_values(loss_type, beta, eps, expected):
    out, rc, rr = dpo_loss(PC, PR, RC, RR, beta=beta, loss_type=loss_type, label_smoothing=eps)
    assert out.item() == pytest.approx(expected, abs=1e-12)
    # implicit rewards: beta * (policy - ref) = beta * 1 and beta * -1
    assert rc.item() == pytest.approx(beta) and rr.item() == pytest.approx(-beta)


def test_dpo_gradient_and_detached_rewards():
    """d/d policy_chosen of -log s(beta h) = -beta s(-beta h) = -0.5 s(-1) = -0.5 * 0.2689414213699951."""
    pc = PC.clone().requires_grad_(True)
    out, rc, rr = dpo_loss(pc, PR, RC, RR, beta=0.5)
    out.sum().backward()
    assert pc.grad.item() == pytest.approx(-0.5 * 0.2689414213699951, abs=1e-12)
    assert not rc.requires_grad and not rr.requires_grad


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(loss_type="kto"),
        dict(beta=0.0),
        dict(label_smoothing=0.6),
        dict(loss_type="robust", label_smoothing=0.5),
        dict(loss_type="ipo", label_smoothing=0.1),
        dict(loss_type="hinge", label_smoothing=0.1),
    ],
)
def test_dpo_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        dpo_loss(PC, PR, RC, RR, **kwargs)


def test_dpo_shape_mismatch_raises():
    with pytest.raises(ValueError, match="same shape"):
        dpo_loss(t(1.0, 2.0), PR, RC, RR)


def test_spin_is_dpo_with_lambda(monkeypatch):
    """SPIN with lambda 0.5 on (real, generated) = (PC, PR) gives DPO's log(1 + e^-1), through dpo_loss."""
    out, _rc, _rr = spin_loss(PC, PR, RC, RR, lambda_=0.5)
    assert out.item() == pytest.approx(L1, abs=1e-12)
    calls = []
    real_dpo = losses.dpo_loss
    monkeypatch.setattr(losses, "dpo_loss", lambda *a, **k: calls.append(k) or real_dpo(*a, **k))
    spin_loss(PC, PR, RC, RR, lambda_=0.3)
    assert calls == [dict(beta=0.3, loss_type="sigmoid")]


def test_ranking_k2_is_bradley_terry():
    r = torch.tensor([[1.5, -0.5], [0.0, 2.0], [3.0, 3.0]])
    expected = -F.logsigmoid(r[:, 0] - r[:, 1])
    torch.testing.assert_close(ranking_loss(r), expected)


def test_ranking_k3_hand_value_and_padding():
    """Rewards [2, 1, 0] best first: pairs (2-1, 2-0, 1-0) = (1, 2, 1) -> (2 L1 + L2) / 3.

    A fourth padded rank (an inf, even) must change nothing, and its gradient must stay finite (0).
    """
    expected = (2 * L1 + L2) / 3
    assert ranking_loss(t(2.0, 1.0, 0.0)[None]).item() == pytest.approx(expected, abs=1e-12)
    rewards = t(2.0, 1.0, 0.0, math.inf)[None].requires_grad_(True)
    mask = torch.tensor([[True, True, True, False]])
    out = ranking_loss(rewards, mask)
    assert out.item() == pytest.approx(expected, abs=1e-12)
    out.sum().backward()
    assert torch.isfinite(rewards.grad).all() and rewards.grad[0, 3] == 0


def test_ranking_rows_with_different_numbers_of_ranks():
    """Row 0 has 2 real ranks (BT on 1 - 0 = 1 -> L1); row 1 has 3 -> (2 L1 + L2) / 3."""
    r = t(1.0, 0.0, 7.0, 2.0, 1.0, 0.0).reshape(2, 3)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    torch.testing.assert_close(ranking_loss(r, mask), t(L1, (2 * L1 + L2) / 3))


def test_ranking_needs_two_ranks():
    with pytest.raises(ValueError, match="at least 2"):
        ranking_loss(t(1.0, 0.0)[None], torch.tensor([[True, False]]))


def test_gae_hand_computation():
    """gamma 0.9, lam 0.5, rewards [0, 0, 1, (5)], values [0.5, 0.4, 0.3, (7)], last token masked out.

    t=2: delta = 1 + 0.9*0 - 0.3 = 0.7                     A2 = 0.7
    t=1: delta = 0 + 0.9*0.3 - 0.4 = -0.13                 A1 = -0.13 + 0.45*0.7 = 0.185
    t=0: delta = 0 + 0.9*0.4 - 0.5 = -0.14                 A0 = -0.14 + 0.45*0.185 = -0.05675
    returns = A + V = [0.44325, 0.585, 1.0, 0]; the masked token gets 0 for both.
    """
    rewards, values = t(0.0, 0.0, 1.0, 5.0)[None], t(0.5, 0.4, 0.3, 7.0)[None]
    mask = torch.tensor([[True, True, True, False]])
    adv, ret = gae_advantages(rewards, values, mask, gamma=0.9, lam=0.5)
    torch.testing.assert_close(adv, t(-0.05675, 0.185, 0.7, 0.0)[None])
    torch.testing.assert_close(ret, t(0.44325, 0.585, 1.0, 0.0)[None])


def test_gae_lam1_gamma1_is_reward_to_go_minus_value():
    """With gamma = lam = 1, A_t = sum_{s >= t} r_s - V_t: rewards [1, 2, 3], V = 0 -> [6, 5, 3]."""
    adv, _ret = gae_advantages(
        t(1.0, 2.0, 3.0)[None],
        torch.zeros(1, 3, dtype=torch.float64),
        torch.ones(1, 3, dtype=torch.bool),
        gamma=1.0,
        lam=1.0,
    )
    torch.testing.assert_close(adv, t(6.0, 5.0, 3.0)[None])


def test_ppo_policy_loss_hand_values():
    """cliprange 0.2; (ratio, advantage) per token and max(-A r, -A clip(r)):
    (1.5, 1) -> max(-1.5, -1.2) = -1.2 clipped    (0.5, 1) -> max(-0.5, -0.8) = -0.5
    (1.0, -2) -> 2 (equal, not clipped)           (0.5, -1) -> max(0.5, 0.8) = 0.8 clipped
    A fifth token is masked out. loss = (-1.2 - 0.5 + 2 + 0.8) / 4 = 0.275, clipfrac = 2/4.
    """
    ratios = t(1.5, 0.5, 1.0, 0.5, 100.0)[None]
    old = t(-1.0, -2.0, -0.5, -3.0, -1.0)[None]
    adv = t(1.0, 1.0, -2.0, -1.0, 50.0)[None]
    mask = torch.tensor([[True, True, True, True, False]])
    loss, clipfrac = losses.ppo_policy_loss(old + ratios.log(), old, adv, mask, cliprange=0.2)
    assert loss.item() == pytest.approx(0.275, abs=1e-12)
    assert clipfrac.item() == pytest.approx(0.5)


def test_ppo_value_loss_hand_values():
    """cliprange 0.2; (V, V_old, R):
    (1.0, 0.5, 0.0): clip -> 0.7; errors 1.0 vs 0.49 -> 1.0 (unclipped wins)
    (0.5, 0.4, 1.0): inside the range -> 0.25 both, not clipped
    (0.0, 1.0, 0.0): clip -> 0.8; errors 0 vs 0.64 -> 0.64 (clipped wins)
    loss = 0.5 * (1 + 0.25 + 0.64) / 3 = 0.315, clipfrac 1/3.
    """
    v, old, ret = t(1.0, 0.5, 0.0)[None], t(0.5, 0.4, 1.0)[None], t(0.0, 1.0, 0.0)[None]
    loss, clipfrac = losses.ppo_value_loss(v, old, ret, torch.ones(1, 3, dtype=torch.bool), cliprange_value=0.2)
    assert loss.item() == pytest.approx(0.315, abs=1e-12)
    assert clipfrac.item() == pytest.approx(1 / 3)


def test_kl_estimators():
    """log p - log q = 1: k1 = 1, k3 = e^-1 - 1 + 1 = e^-1; = -1: k1 = -1, k3 = e - 1 - 1 = e - 2."""
    lp, ref = t(-1.0, -2.0), t(-2.0, -1.0)
    torch.testing.assert_close(kl_penalty(lp, ref, "k1"), t(1.0, -1.0))
    torch.testing.assert_close(kl_penalty(lp, ref, "k3"), t(math.exp(-1), math.e - 2))
    with pytest.raises(ValueError):
        kl_penalty(lp, ref, "k2x")


def test_adaptive_kl_controller_ziegler():
    """init 0.2, target 6, horizon 10000.
    KL 9: e = clip(9/6 - 1) = 0.2 (clipped from 0.5); 0.2 * (1 + 0.2 * 256 / 10000) = 0.201024.
    KL 5.4: e = -0.1; 0.201024 * (1 - 0.1 * 1000 / 10000) = 0.201024 * 0.99 = 0.19901376.
    """
    c = AdaptiveKLController(0.2, target=6.0, horizon=10000)
    assert c.update(9.0, 256) == pytest.approx(0.201024, abs=1e-12)
    assert c.update(5.4, 1000) == pytest.approx(0.19901376, abs=1e-12)
    assert c.value == pytest.approx(0.19901376, abs=1e-12)
    f = FixedKLController(0.05)
    assert f.update(100.0, 10) == 0.05 and f.value == 0.05
    with pytest.raises(ValueError):
        AdaptiveKLController(0.2, target=0.0, horizon=1)


def test_whiten_hand_values():
    """Masked-in [1, 2, 3]: mean 2, Bessel variance (1 + 0 + 1) / 2 = 1 -> [-1, 0, 1]; the masked 100 -> 0."""
    v, mask = t(1.0, 2.0, 3.0, 100.0)[None], torch.tensor([[True, True, True, False]])
    torch.testing.assert_close(whiten(v, mask), t(-1.0, 0.0, 1.0, 0.0)[None], atol=1e-7, rtol=0)
    torch.testing.assert_close(whiten(v, mask, shift_mean=False), t(1.0, 2.0, 3.0, 0.0)[None], atol=1e-7, rtol=0)
