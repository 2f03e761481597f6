"""The one reward-source adapter: callables, reward models through their own tokenizer, the self-judge."""

import math

import pytest
import torch

from self_rewarding_lm_pytorch import ExternalRewardDPOConfig, PPOStageConfig, RewardModel
from self_rewarding_lm_pytorch.core.reward_source import SELF_JUDGE, Scorer, check_reward_source, scoring_fn
from self_rewarding_lm_pytorch.core.tokenizer import ByteTokenizer, CallableTokenizer
from self_rewarding_lm_pytorch.generation.synthetic import PerplexityScorer

pytestmark = pytest.mark.unit


def length_reward(prompts, responses):
    return [float(len(r)) for r in responses]


def shifted_tokenizer():
    """Ids that differ from the byte tokenizer's for every character (and fit a 43-id embedding)."""
    return CallableTokenizer(
        lambda s: [3 + (b % 40) for b in s.encode("utf-8")], lambda ids: "", pad_id=0, eos_id=1, vocab_size=43
    )


def test_callable_scores_become_a_float_tensor():
    scorer = scoring_fn(length_reward)
    scores = scorer(["p", "q"], ["abc", ""])
    assert scores.dtype == torch.float32 and scores.tolist() == [3.0, 0.0] and scorer.higher_is_better


def test_column_of_scores_is_accepted_and_a_wrong_count_is_an_error():
    assert scoring_fn(lambda p, r: torch.ones(len(r), 1))(["a", "b"], ["c", "d"]).tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="my_reward returned 1 scores for 2 responses"):
        scoring_fn(lambda p, r: [1.0], name="my_reward")(["a", "b"], ["c", "d"])


def test_reward_model_scores_through_its_own_tokenizer():
    torch.manual_seed(0)
    rm = RewardModel(num_tokens=43, max_seq_len=32, dim=8, depth=1, heads=2, tokenizer=shifted_tokenizer())
    prompts, responses = ["hello ", "a"], ["world", "bc"]
    expected = rm.score(prompts, responses)
    torch.testing.assert_close(scoring_fn(rm)(prompts, responses), expected)
    # the policy's byte ids would not even fit this model's embedding: proof it never sees them
    assert max(ByteTokenizer().encode("hello world")) >= 43


def test_higher_is_better_is_read_from_the_source():
    lm = torch.nn.Embedding(4, 4)  # never called: only the flag is read
    assert scoring_fn(PerplexityScorer(lm, ByteTokenizer())).higher_is_better is False


def test_self_judge_needs_the_stage_function():
    assert scoring_fn(SELF_JUDGE, self_judge=length_reward)(["p"], ["xy"]).tolist() == [2.0]
    with pytest.raises(TypeError, match="reward must be a callable"):
        scoring_fn(SELF_JUDGE)


def test_a_scorer_passes_through_unchanged():
    scorer = Scorer(length_reward, higher_is_better=False)
    assert scoring_fn(scorer) is scorer


@pytest.mark.parametrize("bad", [42, "not_a_judge", None, 1.5, [1, 2], int])
def test_bad_sources_are_type_errors_naming_the_field(bad):
    with pytest.raises(TypeError, match="reward_model must be"):
        check_reward_source(bad, name="reward_model")
    with pytest.raises(TypeError, match="reward_model must be"):
        ExternalRewardDPOConfig(bad, ["p"], 2)
    with pytest.raises(TypeError, match="reward must be"):
        PPOStageConfig(["p"], reward=bad)


def test_stage_configs_accept_every_form():
    torch.manual_seed(0)
    rm = RewardModel(num_tokens=259, max_seq_len=32, dim=8, depth=1, heads=2)
    for source in (length_reward, rm):
        assert ExternalRewardDPOConfig(source, ["p"], 2).reward_model is source
        assert PPOStageConfig(["p"], reward=source).reward is source
    assert PPOStageConfig(["p"]).reward == SELF_JUDGE


def test_nan_scores_pass_through():
    scores = scoring_fn(lambda p, r: [math.nan, 1.0])(["a", "b"], ["c", "d"])
    assert math.isnan(scores[0]) and scores[1] == 1.0
