"""Chat-templated prompts are masked out of every loss: SFT, DPO, SPIN examples count only the
assistant part; the judge and PPO/best-of-N prompts are rendered as user turns."""

from __future__ import annotations

import pytest
import torch

from self_rewarding_lm_pytorch.core.batching import collate_examples
from self_rewarding_lm_pytorch.core.losses import sft_loss
from self_rewarding_lm_pytorch.core.tokenizer import as_tokenizer, encode_prompt
from self_rewarding_lm_pytorch.trainers.dpo import collate_pairs, encode_pairs
from self_rewarding_lm_pytorch.trainers.sft import prepare_sft_examples
from self_rewarding_lm_pytorch.trainers.spin import encode_sft_items

pytestmark = pytest.mark.unit

ITEMS = [{"prompt": "say hello", "response": "hello!"}, {"prompt": "what is two plus two?", "response": "four."}]


def assistant_only(hf_tokenizer, ids, is_response):
    """The masked-in tokens decode to exactly the assistant turn (the response and the EOS)."""
    return hf_tokenizer.decode(ids[is_response].tolist())


def test_sft_loss_has_no_gradient_on_chat_prompt_tokens(hf_tokenizer):
    tok = as_tokenizer(hf_tokenizer)
    examples, _ = prepare_sft_examples(ITEMS, tok)
    batch = collate_examples(examples, tok.pad_id)
    for row, item in enumerate(ITEMS):
        assert assistant_only(hf_tokenizer, batch["input_ids"][row], batch["is_response"][row]) == (
            item["response"] + "<|eos|>"
        )
        assert examples[row][1] == len(encode_prompt(tok, item["prompt"]))
    logits = torch.randn(*batch["input_ids"].shape, len(hf_tokenizer), requires_grad=True)
    sft_loss(logits, batch["input_ids"], batch["is_response"]).sum().backward()
    for row, (_, prompt_len) in enumerate(examples):
        # logits[t] predicts token t + 1: positions before prompt_len - 1 predict prompt tokens only
        assert not logits.grad[row, : prompt_len - 1].any()
        assert logits.grad[row, prompt_len - 1].any()


def test_dpo_and_spin_pairs_count_only_the_assistant_turn(hf_tokenizer):
    tok = as_tokenizer(hf_tokenizer)
    pairs = encode_pairs([{"prompt": "say hello", "chosen": "hello!", "rejected": "no."}], tokenizer=tok)
    batch = collate_pairs(pairs, tok.pad_id)
    decoded = [
        assistant_only(hf_tokenizer, i, m) for i, m in zip(batch["input_ids"], batch["is_response"], strict=True)
    ]
    assert decoded == ["hello!<|eos|>", "no.<|eos|>"]
    for prompt_ids, real in encode_sft_items(ITEMS, tok, max_seq_len=64):
        assert hf_tokenizer.decode(prompt_ids).endswith("<|assistant|>")
        assert hf_tokenizer.decode(real).endswith("<|eos|>")


def test_chat_template_false_masks_the_plain_prompt(hf_tokenizer):
    tok = as_tokenizer(hf_tokenizer, chat_template=False)
    examples, _ = prepare_sft_examples(ITEMS, tok)
    ids, prompt_len = examples[0]
    assert hf_tokenizer.decode(ids[:prompt_len]) == "say hello"


def test_judge_prompt_is_rendered_as_a_user_turn(hf_tokenizer, monkeypatch):
    from self_rewarding_lm_pytorch import RewardConfig, judge_scores
    from self_rewarding_lm_pytorch.core import sampling

    seen = []

    def fake_sample(model, prompts, **kwargs):
        seen.extend(prompts)
        raise RuntimeError("stop here")

    monkeypatch.setattr(sampling, "sample", fake_sample)
    judge = RewardConfig("rate {{ prompt }} / {{ response }}", "Score: {{ reward }}")
    with pytest.raises(RuntimeError, match="stop here"):
        judge_scores(None, as_tokenizer(hf_tokenizer), judge, ["hi"], ["yo"], num_judgments=1, max_new_tokens=2)
    assert hf_tokenizer.decode(seen[0].tolist()) == "<|bos|><|user|>rate hi / yo\n<|assistant|>"
