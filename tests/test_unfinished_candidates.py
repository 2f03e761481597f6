"""Candidates cut at max_new_tokens are recorded as unfinished, not chosen by default, and never
trained with a fake EOS (issue #11, defect 5)."""

import pytest
from test_judge import ScriptedModel  # tests/ is on sys.path (rootdir conftest, no package)

from self_rewarding_lm_pytorch.core.files import read_jsonl
from self_rewarding_lm_pytorch.core.tokenizer import ByteTokenizer
from self_rewarding_lm_pytorch.self_reward.preferences import generate_preferences
from self_rewarding_lm_pytorch.stages.self_reward_dpo import SelfRewardDPOConfig
from self_rewarding_lm_pytorch.trainers.dpo import encode_pairs

pytestmark = pytest.mark.stage

TOK = ByteTokenizer()
LONG = "B" * 10  # longer than max_new_tokens=4: always cut


def longer_is_better(prompts, responses):
    return [float(len(r)) for r in responses]


def run(tmp_path, **kwargs):
    model = ScriptedModel(TOK, lambda prefix: ["A", LONG], max_seq_len=64)
    prompts = [f"p{i}|" for i in range(6)]
    return generate_preferences(
        model,
        TOK,
        prompts,
        reward_fn=longer_is_better,
        max_new_tokens=4,
        num_candidates=4,
        out_dir=tmp_path,
        seed=0,
        use_cache=False,
        progress=False,
        **kwargs,
    )


def test_unfinished_candidates_are_recorded_and_never_chosen_by_default(tmp_path):
    result = run(tmp_path)
    cands = [c for rec in read_jsonl(tmp_path / "candidates.jsonl") for c in rec["candidates"]]
    assert {(c["response"], c["finished"]) for c in cands} == {("A", True), ("BBBB", False)}
    unfinished = sum(not c["finished"] for c in cands)
    assert result.stats["candidates_unfinished"] == unfinished > 0
    # every prompt that drew both answers would have chosen the cut one: all dropped, none chosen
    assert all(r["chosen_finished"] for r in result.records)
    assert result.stats["prompts_dropped"].get("unfinished_chosen", 0) > 0
    assert not any(r["chosen"] == "BBBB" for r in result.records)


def test_allowed_unfinished_chosen_is_trained_without_a_fake_eos(tmp_path):
    result = run(tmp_path, allow_unfinished_chosen=True)
    cut = [r for r in result.records if r["chosen"] == "BBBB"]
    assert cut and all(r["chosen_finished"] is False and r["rejected_finished"] is True for r in cut)
    (pair,) = encode_pairs(cut[:1], TOK)
    chosen_ids, prompt_len = pair["chosen"]
    rejected_ids, _ = pair["rejected"]
    assert chosen_ids[prompt_len:] == TOK.encode("BBBB")  # no EOS appended to what did not end
    assert rejected_ids[-1] == TOK.eos_id  # a finished response keeps its EOS


def test_stage_field_defaults_to_false():
    assert SelfRewardDPOConfig(prompt_dataset=["p"], num_generated_preference_pairs=1).allow_unfinished_chosen is False
