"""Hugging Face models and tokenizers behind the package's interfaces: import hygiene, tokenizer
adapter, chat rendering, and the one log-prob shift against HF's own loss."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch

from self_rewarding_lm_pytorch import sequence_logprobs
from self_rewarding_lm_pytorch.core.batching import collate_examples, encode_example
from self_rewarding_lm_pytorch.core.tokenizer import as_tokenizer
from self_rewarding_lm_pytorch.models import HFCausalLM, as_model, max_seq_len_of, num_tokens_of

from .conftest import FAMILIES, load_model

pytestmark = pytest.mark.unit


def test_importing_the_package_imports_neither_transformers_nor_peft():
    code = (
        "import sys, self_rewarding_lm_pytorch as s\n"
        "s.SelfRewardingTrainer, s.sample, s.SFTTrainer, s.DPOTrainer, s.SPINTrainer, s.PPOTrainer\n"
        "s.BestOfNSampler, s.generate_synthetic_dataset, s.RewardModelTrainer\n"
        "s.RewardModel(num_tokens=259, max_seq_len=16, dim=16, depth=1, heads=2).score(['a'], ['b'])\n"
        "import self_rewarding_lm_pytorch.models\n"
        "print(sorted(m for m in ('transformers', 'peft') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_hf_tokenizer_is_adapted_with_its_own_pad_and_eos(hf_tokenizer):
    tok = as_tokenizer(hf_tokenizer)
    assert (tok.pad_id, tok.eos_id) == (hf_tokenizer.pad_token_id, hf_tokenizer.eos_token_id)
    assert tok.decode(tok.encode("the cat sat")) == "the cat sat"


def test_missing_pad_token_falls_back_to_eos_with_a_warning(hf_tokenizer):
    hf_tokenizer.pad_token = None
    with pytest.warns(UserWarning, match="no pad token"):
        tok = as_tokenizer(hf_tokenizer)
    assert tok.pad_id == hf_tokenizer.eos_token_id


def test_chat_template_renders_prompt_as_user_turn_and_response_as_assistant_turn(hf_tokenizer):
    tok = as_tokenizer(hf_tokenizer)
    ids, prompt_len = encode_example(tok, "say hello", "hello!")
    text = hf_tokenizer.decode(ids)
    assert text == "<|bos|><|user|>say hello\n<|assistant|>hello!<|eos|>"
    assert hf_tokenizer.decode(ids[:prompt_len]) == "<|bos|><|user|>say hello\n<|assistant|>"
    assert ids[-1] == tok.eos_id and ids.count(tok.eos_id) == 1


def test_chat_template_false_is_plain_concatenation(hf_tokenizer):
    tok = as_tokenizer(hf_tokenizer, chat_template=False)
    ids, prompt_len = encode_example(tok, "say hello", "hello!")
    assert hf_tokenizer.decode(ids[:prompt_len]) == "say hello"
    assert hf_tokenizer.decode(ids[prompt_len:]) == "hello!<|eos|>"


@pytest.mark.parametrize("family", FAMILIES)
def test_wrapper_reports_length_and_vocabulary(hf_folders, family):
    model = as_model(load_model(hf_folders, family))
    assert isinstance(model, HFCausalLM) and as_model(model) is model
    assert max_seq_len_of(model) == 128
    assert num_tokens_of(model) == model.hf.get_output_embeddings().weight.shape[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_sequence_logprobs_on_hf_logits_equals_hf_loss(hf_folders, hf_tokenizer, family):
    """Our shift + mask against HF's labels loss (mean NLL over labels != -100) on the same tokens."""
    hf = load_model(hf_folders, family)
    tok = as_tokenizer(hf_tokenizer)
    examples = [encode_example(tok, "say hello", "hello! goodbye!"), encode_example(tok, "what is 2 + 2?", "four.")]
    batch = collate_examples(examples, tok.pad_id)
    with torch.no_grad():
        ours = sequence_logprobs(as_model(hf)(batch["input_ids"]), batch["input_ids"], batch["is_response"])
        for row in range(2):
            labels = batch["input_ids"][row : row + 1].masked_fill(~batch["is_response"][row : row + 1], -100)
            out = hf(input_ids=batch["input_ids"][row : row + 1], labels=labels)
            count = batch["is_response"][row].sum()
            torch.testing.assert_close(ours[row], -out.loss * count, rtol=1e-5, atol=1e-4)


def test_peft_config_on_a_non_hf_model_is_a_type_error(tiny_model):
    with pytest.raises(TypeError, match="Hugging Face models only"):
        as_model(tiny_model, peft_config=object())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert as_model(tiny_model) is tiny_model
