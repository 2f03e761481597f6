"""Self-consistency reward: exact shares by hand, the extractor's edge cases, use as a stage reward."""

import math
import re

import pytest
from conftest import tiny_lm
from hypothesis import given
from hypothesis import strategies as st

from self_rewarding_lm_pytorch import SelfConsistencyReward, consistency_scores, make_answer_extractor


@pytest.mark.unit
def test_shares_by_hand():
    # prompt a: answers 5, 5, 7, (none) -> 2/4, 2/4, 1/4, NaN; prompt b: 3, 3 -> 1, 1
    prompts = ["a", "a", "b", "a", "a", "b"]
    responses = ["x=5", "x=5", "x=3", "x=7", "no idea", "x= 3 "]
    scores = SelfConsistencyReward(r"=\s*(\d+)")(prompts, responses)
    assert scores[:4] == [0.5, 0.5, 1.0, 0.25]
    assert math.isnan(scores[4])
    assert scores[5] == 1.0


@pytest.mark.unit
def test_eight_samples_majority_of_five():
    responses = ["46"] * 5 + ["45", "56", "45"]
    scores = SelfConsistencyReward()(["12+34="] * 8, responses)
    assert scores == [5 / 8] * 5 + [2 / 8, 1 / 8, 2 / 8]


@pytest.mark.unit
def test_prompts_and_answers_must_align():
    with pytest.raises(ValueError, match="2 prompts but 1"):
        SelfConsistencyReward()(["a", "b"], ["x"])
    with pytest.raises(ValueError, match="1 prompts but 2 answers"):
        consistency_scores(["a"], ["x", "y"])


@pytest.mark.unit
def test_bad_extractors_are_errors():
    with pytest.raises(re.error):
        SelfConsistencyReward("(unclosed")
    with pytest.raises(TypeError, match="regex, a callable or None"):
        SelfConsistencyReward(42)
    reward = SelfConsistencyReward(lambda r: len(r))
    with pytest.raises(TypeError, match="str or None"):
        reward(["p"], ["abc"])


@pytest.mark.unit
@given(st.text())
def test_no_extractor_means_the_stripped_response(text):
    answer = make_answer_extractor(None)(text)
    assert answer == (text.strip() or None)


@pytest.mark.unit
@given(st.text(alphabet="0123456789 =ab-\n", max_size=30))
def test_regex_takes_the_first_group_of_the_first_match(text):
    pattern = re.compile(r"=\s*(-?\d+)")
    match = pattern.search(text)
    expected = None if match is None else match.group(1)
    assert make_answer_extractor(pattern)(text) == expected


@pytest.mark.unit
@given(st.text(alphabet="0123456789 ab", max_size=20))
def test_regex_without_a_group_takes_the_whole_match(text):
    match = re.search(r"\d+", text)
    assert make_answer_extractor(r"\d+")(text) == (None if match is None else match.group(0))


@pytest.mark.unit
@given(st.lists(st.sampled_from(["1", "2", "3", None]), min_size=1, max_size=12))
def test_scores_are_vote_shares_over_all_samples(answers):
    scores = consistency_scores(["p"] * len(answers), answers)
    for answer, score in zip(answers, scores, strict=True):
        if answer is None:
            assert math.isnan(score)
        else:
            assert score == answers.count(answer) / len(answers)


@pytest.mark.stage
def test_usable_as_the_external_reward_of_a_stage(tmp_path):
    import json

    from self_rewarding_lm_pytorch import ByteTokenizer, ExternalRewardDPOConfig, SelfRewardingTrainer

    model = tiny_lm(max_seq_len=32, dim=16)
    # the first byte is the answer: tiny random models repeat bytes often enough to make majorities
    reward = SelfConsistencyReward(r"^(.)")
    stage = ExternalRewardDPOConfig(
        reward,
        [f"q{i}" for i in range(8)],
        8,
        num_candidate_responses=8,
        num_train_steps=1,
        batch_size=2,
        max_new_tokens=3,
        gen_temperature=0.5,
    )
    trainer = SelfRewardingTrainer(
        model,
        [stage],
        tokenizer=ByteTokenizer(),
        checkpoints_folder=tmp_path / "run",
        seed=1,
        accelerate_kwargs=dict(cpu=True),
        progress=False,
    )
    trainer()
    rows = [json.loads(line) for line in (tmp_path / "run" / "01-external-reward-dpo" / "candidates.jsonl").open()]
    assert len(rows) == 8
    for row in rows:
        responses = [c["response"] for c in row["candidates"]]
        expected = reward([row["prompt"]] * len(responses), responses)
        got = [c["score"] for c in row["candidates"]]
        assert [None if math.isnan(e) else e for e in expected] == pytest.approx(
            [None if g is None or (isinstance(g, float) and math.isnan(g)) else g for g in got]
        )
