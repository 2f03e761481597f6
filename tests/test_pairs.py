import functools
import math

import pytest
import torch

from self_rewarding_lm_pytorch.self_reward.pairs import Pair, best_vs_worst, length_controlled, make_pair_policy

pytestmark = pytest.mark.unit

NAN = math.nan


def s(*rows):
    return torch.tensor(rows, dtype=torch.float32)


@pytest.mark.parametrize(
    "row, expected",
    [
        ([1.0, 4.0, 2.0, 3.0], (1, 0)),  # plain: best 4 at 1, worst 1 at 0
        ([2.0, 2.0, 2.0, 2.0], None),  # all tied
        ([NAN, 3.0, NAN, NAN], None),  # one valid score
        ([NAN, NAN, NAN, NAN], None),  # none valid
        ([NAN, 3.0, NAN, 1.0], (1, 3)),  # two valid, NaNs ignored
        ([5.0, 1.0, 5.0, 1.0], (0, 1)),  # ties inside best and worst break to the lowest index
        ([3.0, NAN, 3.0, NAN], None),  # two valid but tied
        ([-1.0, 0.5], (1, 0)),  # two candidates, negative scores
        ([4.5, 4.6, 4.4], (1, 2)),  # decimal averages
    ],
)
def test_best_vs_worst_table(row, expected):
    pairs = best_vs_worst(s(row))
    assert pairs == ([] if expected is None else [Pair(0, *expected)])
    for p in pairs:
        assert p.chosen_idx != p.rejected_idx


def test_best_vs_worst_many_prompts_keeps_prompt_indices():
    scores = s([1.0, 2.0], [NAN, NAN], [3.0, 0.0], [2.0, 2.0])
    assert best_vs_worst(scores) == [(0, 1, 0), (2, 0, 1)]


@pytest.mark.parametrize("margin, kept", [(0.0, True), (1.0, True), (1.5, True), (1.6, False)])
def test_min_margin(margin, kept):
    """Best 3.0 and worst 1.5: margin 1.5, kept when min_margin <= 1.5."""
    assert best_vs_worst(s([1.5, 3.0, 2.0]), min_margin=margin) == ([(0, 1, 0)] if kept else [])


def test_bad_inputs():
    with pytest.raises(ValueError):
        best_vs_worst(torch.zeros(4))
    with pytest.raises(TypeError):
        best_vs_worst(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError):
        best_vs_worst(s([1.0, 2.0]), min_margin=-1)
    with pytest.raises(ValueError):
        length_controlled(s([1.0, 2.0]), torch.tensor([[1, 2]]), rho=1.5)
    with pytest.raises(ValueError):
        length_controlled(s([1.0, 2.0]), None, rho=0.1)
    with pytest.raises(ValueError):
        length_controlled(s([1.0, 2.0]), torch.tensor([[1, 2, 3]]), rho=0.1)


@pytest.mark.parametrize(
    "row, lengths, rho, expected",
    [
        # scores 0..4, width rho * 4. rho 0: top tier {4} at idx 4, bottom {0} at idx 0.
        ([0.0, 1.0, 2.0, 3.0, 4.0], [10, 20, 30, 5, 50], 0.0, (4, 0)),
        # rho 0.25 (width 1): top tier {3, 4} = idx 3 (len 5), 4 (len 50) -> shortest idx 3;
        # bottom tier {0, 1} = idx 0 (len 10), 1 (len 20) -> longest idx 1
        ([0.0, 1.0, 2.0, 3.0, 4.0], [10, 20, 30, 5, 50], 0.25, (3, 1)),
        # rho 0.5 (width 2): top {2,3,4} shortest idx 3 (5); bottom {0,1,2} longest idx 2 (30):
        # chosen 3.0 > rejected 2.0 so kept
        ([0.0, 1.0, 2.0, 3.0, 4.0], [10, 20, 30, 5, 50], 0.5, (3, 2)),
        # rho 1 (width 4): every candidate in both tiers: shortest idx 3 (score 3), longest idx 4
        # (score 4): chosen would score below rejected -> dropped
        ([0.0, 1.0, 2.0, 3.0, 4.0], [10, 20, 30, 5, 50], 1.0, None),
        # rho 0 with tied top scores: the shorter of the two 4s; tied bottom: the longer of the 1s
        ([4.0, 1.0, 4.0, 1.0], [9, 3, 2, 7], 0.0, (2, 3)),
        # equal lengths in a tier break to the lowest index
        ([4.0, 1.0, 4.0, 1.0], [5, 5, 5, 5], 0.0, (0, 1)),
        # NaNs never enter a tier, even when short or long
        ([NAN, 2.0, NAN, 1.0], [1, 10, 100, 5], 0.5, (1, 3)),
        ([NAN, 2.0, NAN, NAN], [1, 10, 100, 5], 0.5, None),
        ([2.0, 2.0, 2.0], [1, 2, 3], 0.3, None),
    ],
)
def test_length_controlled_table(row, lengths, rho, expected):
    pairs = length_controlled(s(row), torch.tensor([lengths]), rho=rho)
    assert pairs == ([] if expected is None else [Pair(0, *expected)])


def test_length_controlled_rho0_equals_plain_rule_without_ties():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(50, 4, generator=g)
    scores[torch.rand(50, 4, generator=g) < 0.3] = NAN
    lengths = torch.randint(1, 100, (50, 4), generator=g)
    assert length_controlled(scores, lengths, rho=0.0) == best_vs_worst(scores)


def test_length_controlled_min_margin():
    """rho 0.25 picks (3, 1) with scores 3.0 vs 1.0: margin 2 passes 2, fails 2.5."""
    row, lengths = s([0.0, 1.0, 2.0, 3.0, 4.0]), torch.tensor([[10, 20, 30, 5, 50]])
    assert length_controlled(row, lengths, rho=0.25, min_margin=2.0) == [(0, 3, 1)]
    assert length_controlled(row, lengths, rho=0.25, min_margin=2.5) == []


def test_make_pair_policy():
    row, lengths = s([0.0, 1.0, 2.0, 3.0, 4.0]), torch.tensor([[10, 20, 30, 5, 50]])
    assert make_pair_policy("length_controlled", rho=0.25)(row, lengths) == [(0, 3, 1)]
    assert make_pair_policy()(row, lengths) == [(0, 4, 0)]
    custom = functools.partial(best_vs_worst, min_margin=10)
    assert make_pair_policy(custom)(row, lengths) == []
    with pytest.raises(ValueError, match="unknown pair policy"):
        make_pair_policy("random")
    with pytest.raises(TypeError, match="rhoo"):
        make_pair_policy("length_controlled", rhoo=0.2)
