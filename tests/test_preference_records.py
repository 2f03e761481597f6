"""The pure parts of preference generation: which proposed pairs are kept, and why a prompt has none."""

import math

import pytest
import torch

from self_rewarding_lm_pytorch.self_reward.pairs import best_vs_worst
from self_rewarding_lm_pytorch.self_reward.preference_records import ChunkPairs, candidate_records, select_pairs

pytestmark = pytest.mark.unit

NAN = math.nan


def propose(*pairs):
    return lambda scores, lengths: torch.tensor(pairs).reshape(-1, 3)


def test_equal_texts_and_unfinished_chosen_are_dropped_with_their_reasons():
    # 4 prompts x 2 candidates; prompt 1's two texts are equal, prompt 2's chosen did not finish
    responses = ["a", "b", "same", "same", "cut", "done", "x", "y"]
    finished = [True, True, True, True, False, True, True, True]
    scores = torch.tensor([[2.0, 1.0], [2.0, 1.0], [2.0, 1.0], [1.0, 1.0]])
    chosen = select_pairs(best_vs_worst, scores, torch.ones(4, 2), responses, finished, check_finished=True)
    assert chosen.pairs == {0: (0, 1)}
    assert (chosen.identical, chosen.unfinished) == ({1}, {2})
    reasons = [chosen.drop_reason(p, scores[p]) for p in range(4)]
    assert reasons == [None, "identical_pair", "unfinished_chosen", "tied_scores"]
    # without the finished rule (no EOS, or allowed) prompt 2 keeps its pair
    relaxed = select_pairs(best_vs_worst, scores, torch.ones(4, 2), responses, finished, check_finished=False)
    assert relaxed.pairs == {0: (0, 1), 2: (0, 1)}


def test_drop_reasons_for_prompts_the_policy_skipped():
    none = ChunkPairs()
    assert none.drop_reason(0, torch.tensor([NAN, 3.0])) == "fewer_than_2_valid_scores"
    assert none.drop_reason(0, torch.tensor([3.0, NAN, 3.0])) == "tied_scores"
    assert none.drop_reason(0, torch.tensor([1.0, 3.0])) == "rejected_by_pair_policy"


@pytest.mark.parametrize(
    "pair",
    [(2, 0, 1), (0, 0, 0), (0, 0, 2), (-1, 0, 1)],
    ids=["prompt out of range", "chosen is rejected", "candidate out of range", "negative prompt"],
)
def test_an_invalid_proposal_is_an_error_naming_it(pair):
    with pytest.raises(ValueError, match="invalid pair"):
        select_pairs(
            propose(pair), torch.zeros(2, 2), torch.ones(2, 2), ["a", "b", "c", "d"], [True] * 4, check_finished=True
        )


def test_a_prompt_paired_twice_or_an_empty_side_is_an_error():
    with pytest.raises(ValueError, match="invalid pair"):
        select_pairs(
            propose((0, 0, 1), (0, 1, 0)),
            torch.zeros(1, 2),
            torch.ones(1, 2),
            ["a", "b"],
            [True] * 2,
            check_finished=True,
        )
    with pytest.raises(ValueError, match="invalid pair"):
        select_pairs(
            propose((0, 0, 1)), torch.zeros(1, 2), torch.ones(1, 2), ["a", ""], [True] * 2, check_finished=True
        )


def test_candidate_records_carry_every_candidate_and_the_pair():
    items = [(7, "p", [1])]
    scores = torch.tensor([[1.5, NAN]])
    chosen = ChunkPairs(pairs={0: (0, 1)})
    (record,) = candidate_records(
        items, ["a", "b"], scores, torch.tensor([[1, 2]]), ([["j"], []], [[1.5], []]), [True, False], chosen
    )
    assert record["prompt_index"] == 7 and record["pair"] == {"chosen_idx": 0, "rejected_idx": 1}
    assert record["dropped"] is None
    assert [c["score"] for c in record["candidates"]] == [1.5, None]  # NaN is written as null
    assert [c["finished"] for c in record["candidates"]] == [True, False]
    assert record["candidates"][0]["judgments"] == ["j"] and record["candidates"][1]["length"] == 2
