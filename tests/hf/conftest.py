"""Tiny Hugging Face models and a tokenizer built here, once per session: nothing is ever downloaded.

The tokenizer is a byte-level BPE trained in the test with `tokenizers`, with a chat template whose
assistant turn ends in the EOS token. Models are random-initialised from configs: Llama (multi-head
attention), Qwen2 (grouped-query attention) and GPT-2; each is saved with `save_pretrained` and
loaded back with `AutoModelForCausalLM` / `AutoTokenizer`, as users load theirs.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: no hub access, ever
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest
import torch

SPECIALS = ["<|pad|>", "<|bos|>", "<|eos|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
CORPUS = [
    "what is two plus two? four.",
    "the cat sat on the mat. the dog sat on the log.",
    "say hello: hello! say goodbye: goodbye!",
    "1 + 1 = 2, 2 + 2 = 4, 3 + 3 = 6, 4 + 4 = 8",
    "answer with one word. yes. no. maybe.",
] * 20


def build_tokenizer(folder):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def model_config(family: str, vocab_size: int, tokenizer):
    from transformers import GPT2Config, LlamaConfig, Qwen2Config

    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    if family == "llama":
        return LlamaConfig(
            vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
            pad_token_id=tokenizer.pad_token_id, **ids,
        )  # fmt: skip
    if family == "qwen2":  # grouped-query attention: 4 query heads share 2 key/value heads
        return Qwen2Config(
            vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
            pad_token_id=tokenizer.pad_token_id, **ids,
        )  # fmt: skip
    if family == "gpt2":
        return GPT2Config(
            vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=128,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **ids,
        )  # fmt: skip
    raise ValueError(family)


FAMILIES = ("llama", "qwen2", "gpt2")


@pytest.fixture(scope="session")
def hf_folders(tmp_path_factory):
    """{"tokenizer": folder, "llama": folder, "qwen2": folder, "gpt2": folder}; each model folder also
    holds the tokenizer, as a released checkpoint does."""
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("hf")
    tokenizer = build_tokenizer(root / "tokenizer")
    folders = {"tokenizer": root / "tokenizer"}
    for seed, family in enumerate(FAMILIES):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(model_config(family, len(tokenizer), tokenizer))
        model.save_pretrained(root / family)
        tokenizer.save_pretrained(root / family)
        folders[family] = root / family
    return folders


@pytest.fixture
def hf_tokenizer(hf_folders):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(hf_folders["tokenizer"])


def load_model(folders, family: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folders[family]).float().eval()
