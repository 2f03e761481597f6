"""Pairs whose chosen and rejected texts are identical are dropped and counted (issue #11, defect 6)."""

import pytest
from conftest import tiny_lm
from test_judge import ScriptedModel  # tests/ is on sys.path (rootdir conftest, no package)

from self_rewarding_lm_pytorch.core.files import read_jsonl
from self_rewarding_lm_pytorch.core.tokenizer import ByteTokenizer
from self_rewarding_lm_pytorch.self_reward.preferences import generate_preferences
from self_rewarding_lm_pytorch.trainers.dpo import DPOTrainer, PreferenceRecordError

pytestmark = pytest.mark.stage

TOK = ByteTokenizer()


def by_position(prompts, responses):
    """Distinct scores whatever the texts: the pair policy always finds a best and a worst."""
    return [float(i % 4) for i in range(len(responses))]


def test_generation_drops_and_counts_identical_pairs(tmp_path):
    # prompt "same|" always gets the answer "A"; prompt "two|" gets "A" or "BB"
    model = ScriptedModel(TOK, lambda prefix: ["A"] if prefix == "same|" else ["A", "BB"], max_seq_len=32)
    prompts = ["same|", "same|", "two|"]
    result = generate_preferences(
        model, TOK, prompts, reward_fn=by_position, out_dir=tmp_path, seed=0, use_cache=False, progress=False
    )
    assert all(r["chosen"] != r["rejected"] for r in result.records)
    records = read_jsonl(tmp_path / "candidates.jsonl")
    same = [r for r in records if r["prompt"] == "same|"]
    assert [r["dropped"] for r in same] == ["identical_pair", "identical_pair"] and all(r["pair"] is None for r in same)
    identical = sum(r["dropped"] == "identical_pair" for r in records)  # "two|" may draw one answer only
    assert result.stats["identical_pairs"] == result.stats["prompts_dropped"]["identical_pair"] == identical >= 2


def tiny():
    return tiny_lm(max_seq_len=32, dim=16)


def test_dpo_trainer_drops_and_counts_identical_pairs(tmp_path):
    records = [
        {"prompt": "q", "chosen": "same", "rejected": "same"},
        {"prompt": "q", "chosen": "good", "rejected": "bad"},
        ("q", [5, 6], [5, 6]),
    ]
    trainer = DPOTrainer(tiny(), records, num_train_steps=1, batch_size=1, progress=False)
    assert len(trainer.pairs) == 1 and trainer.num_identical_pairs == 2
    assert trainer().info["num_identical_pairs"] == 2
    with pytest.raises(PreferenceRecordError, match="identical"):
        DPOTrainer(tiny(), records[:1], num_train_steps=1, progress=False)
