"""The DPO variants (DPOP, SimPO, ORPO, APO, NCA): exact values against hand derivations, checked early."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from self_rewarding_lm_pytorch.core.losses import (
    DPO_LOSS_TYPES,
    REFERENCE_FREE_LOSS_TYPES,
    check_dpo_loss_args,
    dpo_loss,
)

pytestmark = pytest.mark.unit

LOG2 = math.log(2.0)
L1 = math.log1p(math.exp(-1.0))  # -log s(1); and -log s(-1) = log(1 + e) = 1 + L1


def s(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def t(*xs):
    return torch.tensor(xs, dtype=torch.float64)


def counts(*xs):
    return torch.tensor(xs, dtype=torch.long)


# policy chosen -1, rejected -3, reference -2 and -2: r_c = 1, r_r = -1, h = 2.
PC, PR, RC, RR = t(-1.0), t(-3.0), t(-2.0), t(-2.0)


@pytest.mark.parametrize(
    "policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta, lam, expected",
    [
        # chosen above its reference (r_c = 1): no penalty, DPO's -log s(0.5 * 2) = L1
        (-1.0, -3.0, -2.0, -2.0, 0.5, 50.0, L1),
        # chosen below it: r_c = -3 - -2 = -1, r_r = -6 - -2 = -4, h = 3, penalty max(0, 1) = 1;
        # lambda 1: -log s(0.5 (3 - 1)) = L1; lambda 5: -log s(0.5 (3 - 5)) = -log s(-1) = 1 + L1
        (-3.0, -6.0, -2.0, -2.0, 0.5, 1.0, L1),
        (-3.0, -6.0, -2.0, -2.0, 0.5, 5.0, 1 + L1),
    ],
)
def test_dpop_hand_values(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta, lam, expected):
    out, rc, rr = dpo_loss(
        t(policy_chosen),
        t(policy_rejected),
        t(ref_chosen),
        t(ref_rejected),
        beta=beta,
        loss_type="dpop",
        dpop_lambda=lam,
    )
    assert out.item() == pytest.approx(expected, abs=1e-12)
    # implicit rewards stay DPO's: beta * (policy - ref)
    assert rc.item() == pytest.approx(beta * (policy_chosen - ref_chosen))
    assert rr.item() == pytest.approx(beta * (policy_rejected - ref_rejected))


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(-50, 0), min_size=4, max_size=4),
    st.floats(0.01, 5.0),
)
def test_dpop_with_lambda_zero_is_sigmoid_dpo(logps, beta):
    args = [t(x) for x in logps]
    dpop = dpo_loss(*args, beta=beta, loss_type="dpop", dpop_lambda=0.0)
    sigmoid = dpo_loss(*args, beta=beta, loss_type="sigmoid")
    for a, b in zip(dpop, sigmoid, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_dpop_penalty_pushes_a_displaced_chosen_response_up():
    """With the chosen response below its reference, DPOP's gradient on it is steeper than DPO's:
    d/dpc -log s(beta (h - lam (rc - pc))) = -beta (1 + lam) s(-z); at lam 0 it is -beta s(-beta h)."""
    pc = t(-3.0).requires_grad_(True)
    dpo_loss(pc, t(-6.0), t(-2.0), t(-2.0), beta=0.5, loss_type="dpop", dpop_lambda=1.0)[0].sum().backward()
    # z = 0.5 * (3 - 1) = 1 -> -0.5 * 2 * s(-1)
    assert pc.grad.item() == pytest.approx(-0.5 * 2 * s(-1.0), abs=1e-12)


@pytest.mark.parametrize(
    "beta, gamma, expected",
    [
        # chosen -2 over 2 tokens -> mean -1; rejected -6 over 3 tokens -> mean -2
        (1.0, 0.0, L1),  # -log s(-1 - -2) = -log s(1)
        (2.0, 0.5, math.log1p(math.exp(-1.5))),  # -log s(2 * -1 - 2 * -2 - 0.5) = -log s(1.5)
        (1.0, 2.0, 1 + L1),  # -log s(1 - 2) = -log s(-1)
    ],
)
def test_simpo_hand_values(beta, gamma, expected):
    out, rc, rr = dpo_loss(
        t(-2.0),
        t(-6.0),
        beta=beta,
        loss_type="simpo",
        simpo_gamma=gamma,
        chosen_tokens=counts(2),
        rejected_tokens=counts(3),
    )
    assert out.item() == pytest.approx(expected, abs=1e-12)
    assert rc.item() == pytest.approx(beta * -1.0) and rr.item() == pytest.approx(beta * -2.0)  # beta * mean


@pytest.mark.parametrize(
    "p_chosen, p_rejected, lam, expected",
    [
        # per-token probability 2/3 vs 1/3: odds 2 and 1/2, log odds ratio log 4, -log s(log 4) = log(5/4);
        # NLL of the chosen response per token -log(2/3) = log(3/2)
        (2 / 3, 1 / 3, 0.1, math.log(1.5) + 0.1 * math.log(1.25)),
        # 1/2 vs 1/2: odds 1 and 1, -log s(0) = log 2; NLL log 2
        (1 / 2, 1 / 2, 1.0, 2 * LOG2),
        # lambda 0: the per-token NLL alone
        (2 / 3, 1 / 3, 0.0, math.log(1.5)),
    ],
)
def test_orpo_hand_values(p_chosen, p_rejected, lam, expected):
    """Sums are built from per-token probabilities over 2 (chosen) and 3 (rejected) tokens."""
    out, odds_c, odds_r = dpo_loss(
        t(2 * math.log(p_chosen)),
        t(3 * math.log(p_rejected)),
        loss_type="orpo",
        orpo_lambda=lam,
        chosen_tokens=counts(2),
        rejected_tokens=counts(3),
    )
    assert out.item() == pytest.approx(expected, abs=1e-9)
    assert odds_c.item() == pytest.approx(math.log(p_chosen / (1 - p_chosen)), abs=1e-9)
    assert odds_r.item() == pytest.approx(math.log(p_rejected / (1 - p_rejected)), abs=1e-9)


def test_orpo_at_probability_one_stays_finite():
    pc = t(0.0).requires_grad_(True)
    out = dpo_loss(pc, t(-3.0), loss_type="orpo", chosen_tokens=counts(2), rejected_tokens=counts(3))[0]
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(pc.grad).all()


@pytest.mark.parametrize(
    "loss_type, beta, expected",
    [
        # r_c = 1, r_r = -1. APO-zero: 1 - s(beta r_c) + s(beta r_r); beta 1 -> 1 - s(1) + s(-1) = 2 s(-1)
        ("apo_zero", 1.0, 2 * s(-1.0)),
        # beta 0.5 -> 1 - s(0.5) + s(-0.5) = 2 s(-0.5)
        ("apo_zero", 0.5, 2 * s(-0.5)),
        # APO-down: s(beta r_c) + 1 - s(beta (r_c - r_r)); beta 1 -> s(1) + 1 - s(2) = s(1) + s(-2)
        ("apo_down", 1.0, s(1.0) + s(-2.0)),
        ("apo_down", 0.5, s(0.5) + s(-1.0)),
        # NCA: -log s(beta r_c) - 0.5 log s(-beta r_c) - 0.5 log s(-beta r_r);
        # beta 1 -> L1 + 0.5 (1 + L1) + 0.5 L1 = 2 L1 + 0.5
        ("nca", 1.0, 2 * L1 + 0.5),
    ],
)
def test_apo_and_nca_hand_values(loss_type, beta, expected):
    out, rc, rr = dpo_loss(PC, PR, RC, RR, beta=beta, loss_type=loss_type)
    assert out.item() == pytest.approx(expected, abs=1e-12)
    assert rc.item() == pytest.approx(beta) and rr.item() == pytest.approx(-beta)


@pytest.mark.parametrize("loss_type, expected", [("apo_zero", 1.0), ("apo_down", 1.0), ("nca", 2 * LOG2)])
def test_anchored_losses_at_the_reference(loss_type, expected):
    """Policy = reference: APO's terms are 1 - 1/2 + 1/2 and 1/2 + 1 - 1/2; NCA's log 2 + log 2 / 2 + log 2 / 2."""
    x = t(-4.0, -9.0)
    out, _, _ = dpo_loss(x, x - 2, x, x - 2, beta=0.3, loss_type=loss_type)
    torch.testing.assert_close(out, t(expected, expected))


def test_apo_zero_raises_the_chosen_and_apo_down_lowers_it():
    """The anchor decides the sign of the chosen response's gradient, whatever the rejected one does."""
    for loss_type, sign in (("apo_zero", -1), ("apo_down", 1)):  # loss gradient < 0 means the step raises it
        pc = PC.clone().requires_grad_(True)
        dpo_loss(pc, PR, RC, RR, beta=1.0, loss_type=loss_type)[0].sum().backward()
        assert math.copysign(1, pc.grad.item()) == sign


def test_several_rows_with_different_token_counts():
    """Each row is normalised by its own count: SimPO on two rows equals the rows one at a time."""
    pc, pr, nc, nr = t(-2.0, -9.0), t(-6.0, -1.0), counts(2, 3), counts(3, 1)
    both = dpo_loss(pc, pr, loss_type="simpo", beta=2.0, chosen_tokens=nc, rejected_tokens=nr)[0]
    alone = [
        dpo_loss(
            pc[i : i + 1],
            pr[i : i + 1],
            loss_type="simpo",
            beta=2.0,
            chosen_tokens=nc[i : i + 1],
            rejected_tokens=nr[i : i + 1],
        )[0]
        for i in range(2)
    ]
    torch.testing.assert_close(both, torch.cat(alone))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(loss_type="kto"), "loss_type must be one of"),
        (dict(loss_type="dpop", dpop_lambda=-1.0), "dpop_lambda must be a finite number >= 0"),
        (dict(loss_type="simpo", simpo_gamma=-0.5), "simpo_gamma must be"),
        (dict(loss_type="orpo", orpo_lambda=float("nan")), "orpo_lambda must be"),
        (dict(loss_type="dpop", dpop_lambda=float("inf")), "dpop_lambda must be"),
        (dict(loss_type="simpo", label_smoothing=0.1), "label_smoothing is not defined"),
        (dict(loss_type="nca", beta=0.0), "beta must be > 0"),
    ],
)
def test_bad_values_are_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        check_dpo_loss_args(**kwargs)
    with pytest.raises(ValueError, match=message):
        dpo_loss(PC, PR, RC, RR, chosen_tokens=counts(1), rejected_tokens=counts(1), **kwargs)


@pytest.mark.parametrize("loss_type", REFERENCE_FREE_LOSS_TYPES)
def test_length_normalised_losses_need_token_counts(loss_type):
    with pytest.raises(ValueError, match="pass chosen_tokens and rejected_tokens"):
        dpo_loss(PC, PR, loss_type=loss_type)


@pytest.mark.parametrize("loss_type", sorted(set(DPO_LOSS_TYPES) - set(REFERENCE_FREE_LOSS_TYPES)))
def test_reference_losses_need_the_reference(loss_type):
    with pytest.raises(ValueError, match="pass ref_chosen and ref_rejected"):
        dpo_loss(PC, PR, loss_type=loss_type)


@pytest.mark.parametrize("loss_type", REFERENCE_FREE_LOSS_TYPES)
def test_reference_free_losses_ignore_a_reference(loss_type):
    kw = dict(loss_type=loss_type, chosen_tokens=counts(2), rejected_tokens=counts(3))
    torch.testing.assert_close(dpo_loss(PC, PR, **kw)[0], dpo_loss(PC, PR, RC - 7, RR + 3, **kw)[0])
