"""Keeping the judge alive: judge examples in every DPO step's NLL term."""

import math
import re

import pytest
import torch
from conftest import tiny_lm

from self_rewarding_lm_pytorch import (
    ByteTokenizer,
    ExternalRewardDPOConfig,
    PreferenceLoss,
    SelfRewardingTrainer,
    SFTConfig,
    sample,
)
from self_rewarding_lm_pytorch.core.batching import collate_examples
from self_rewarding_lm_pytorch.trainers.dpo import DPOTask, collate_pairs, encode_pairs
from self_rewarding_lm_pytorch.trainers.judge_mixing import (
    JudgeRecordError,
    attach_judge_examples,
    encode_judge_examples,
)

TOK = ByteTokenizer()
JUDGE = [{"prompt": f"J{i}?", "response": f"Score: {i % 5 + 1}"} for i in range(40)]


@pytest.mark.unit
def test_each_pair_carries_judge_examples_each_used_once_per_round():
    judge = [([1, 2, i], 2) for i in range(5)]
    pairs = attach_judge_examples([{"i": k} for k in range(7)], judge, per_pair=2, seed=3)
    drawn = [ex for p in pairs for ex in p["judge"]]
    assert [len(p["judge"]) for p in pairs] == [2] * 7
    assert sorted(drawn[:5]) == sorted(judge) and sorted(drawn[5:10]) == sorted(judge)  # no repeat within a round
    assert attach_judge_examples([{"i": k} for k in range(7)], judge, per_pair=2, seed=3) == pairs
    assert all("judge" not in p for p in [{"i": 0}])  # the input pairs are not modified


@pytest.mark.unit
def test_bad_judge_examples_are_errors_naming_the_record():
    with pytest.raises(JudgeRecordError, match="judge example 1 must be a dict"):
        encode_judge_examples([JUDGE[0], ("a", "b")], TOK)
    with pytest.raises(JudgeRecordError, match="judge example 0: needs a non-empty prompt"):
        encode_judge_examples([{"prompt": "", "response": "x"}], TOK)
    with pytest.raises(ValueError, match="judge_weight"):
        ExternalRewardDPOConfig(lambda p, r: [0.0] * len(r), ["q"], 1, judge_weight=-1.0)


def _nll_by_hand(model, rows):
    """Mean over rows of the mean -log p of the response tokens, written out without the library."""
    total = []
    for ids, prompt_len in rows:
        x = torch.tensor([ids])
        logp = model(x)[0].log_softmax(-1)
        token_nll = [-logp[t - 1, ids[t]] for t in range(prompt_len, len(ids))]
        total.append(sum(token_nll) / len(token_nll))
    return sum(total) / len(total)


@pytest.mark.unit
def test_the_loss_grows_by_exactly_the_weighted_judge_nll(tiny_model):
    pairs = encode_pairs([("ab", "c", "dd"), ("e", "ff", "g")], TOK)
    judge = encode_judge_examples(JUDGE[:3], TOK)
    items = attach_judge_examples(pairs, judge, per_pair=1, seed=0)
    items = [p | {"ref": (-3.0, -4.0)} for p in items]
    batch = collate_pairs(items, TOK.pad_id)
    assert batch["judge_ids"].shape[0] == 2
    plain, _ = DPOTask(pad_id=TOK.pad_id, loss=PreferenceLoss(sft_weight=0.5)).step(tiny_model, batch)
    mixed, metrics = DPOTask(pad_id=TOK.pad_id, loss=PreferenceLoss(sft_weight=0.5), judge_weight=0.3).step(
        tiny_model, batch
    )
    by_hand = _nll_by_hand(tiny_model, [ex for p in items for ex in p["judge"]])
    assert metrics["judge_nll"].item() == pytest.approx(by_hand.item(), abs=1e-5)
    assert (mixed - plain).item() == pytest.approx(0.3 * by_hand.item(), abs=1e-5)
    # the judge rows pad on their own: the pair rows are as long as without them
    assert (
        batch["input_ids"].shape
        == collate_examples([p[s] for s in ("chosen", "rejected") for p in pairs], 256)["input_ids"].shape
    )


def _parse_rate(model, prompts) -> float:
    out = sample(
        model,
        [torch.tensor(TOK.encode(p)) for p in prompts],
        max_new_tokens=10,
        temperature=0.0,
        eos_id=TOK.eos_id,
        pad_id=TOK.pad_id,
    )
    return sum(re.fullmatch(r"Score: [1-5]", t) is not None for t in out.texts(TOK)) / len(prompts)


def _run(tmp_path, name, *, judge_examples):
    model = tiny_lm(max_seq_len=32)
    sft = SFTConfig(
        JUDGE + [{"prompt": f"q{i}", "response": "aab"} for i in range(20)],
        num_train_steps=150,
        batch_size=16,
        learning_rate=3e-3,
    )
    # An iteration whose pairs pull away from the judge's format: on judge-like prompts, the reward
    # prefers whatever does not start with "Score" (ties broken arbitrarily).
    dpo = ExternalRewardDPOConfig(
        lambda p, r: [float(not x.startswith("Score")) + (sum(map(ord, x)) % 7) / 10 for x in r],
        [f"J{i}?" for i in range(40, 60)],
        20,
        num_train_steps=20,
        batch_size=4,
        learning_rate=1e-2,
        max_new_tokens=8,
        gen_temperature=1.5,
        gen_top_p=None,
        judge_examples=judge_examples,
        judge_weight=1.0,
    )
    parse = {}
    SelfRewardingTrainer(
        model,
        [sft, dpo],
        tokenizer=TOK,
        checkpoints_folder=tmp_path / name,
        seed=0,
        accelerate_kwargs=dict(cpu=True),
        progress=False,
        on_stage_end=lambda info: parse.__setitem__(info.index, _parse_rate(info.model, [j["prompt"] for j in JUDGE])),
    )()
    return parse


@pytest.mark.stage
def test_the_judge_format_survives_a_high_learning_rate_iteration_better_with_mixing(tmp_path):
    without = _run(tmp_path, "without", judge_examples=None)
    with_mixing = _run(tmp_path, "with", judge_examples=JUDGE)
    print(f"parse rate before/after: without mixing {without}, with {with_mixing}")
    assert without[0] == with_mixing[0] >= 0.9  # the same M1, which has learned the format
    # Mixing keeps most of the judge's format where the same iteration without it loses all of it. The
    # margin, not an absolute rate, is the claim: the rate after the iteration also moves with settings
    # this test does not pin (dropout off by default, unfinished candidates never chosen).
    assert without[1] <= 0.25
    assert with_mixing[1] - without[1] >= 0.5
    assert not math.isnan(without[1])
