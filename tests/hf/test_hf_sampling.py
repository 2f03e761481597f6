"""`sample` on Hugging Face models: greedy equals `generate`, cached equals uncached, seeded draws do not
depend on batching, EOS ends rows, only generated tokens come back."""

from __future__ import annotations

import pytest
import torch

from self_rewarding_lm_pytorch import sample
from self_rewarding_lm_pytorch.core.tokenizer import as_tokenizer
from self_rewarding_lm_pytorch.models import as_model

from .conftest import FAMILIES, load_model

pytestmark = pytest.mark.unit

PROMPTS = ["say hello", "what is two plus two?", "the cat", "1 + 1 ="]


def _prompts(tok):
    return [torch.tensor(tok.encode_prompt(p)) for p in PROMPTS]


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_equals_generate_token_for_token(hf_folders, hf_tokenizer, family):
    model, tok = load_model(hf_folders, family), as_tokenizer(hf_tokenizer)
    prompts = _prompts(tok)
    assert len({len(p) for p in prompts}) > 1  # mixed prompt lengths
    out = sample(model, prompts, max_new_tokens=12, temperature=0, eos_id=tok.eos_id, pad_id=tok.pad_id)
    assert out.backend == "hf"
    for row, prompt in enumerate(prompts):
        want = model.generate(
            prompt[None], do_sample=False, max_new_tokens=12, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id
        )[0, len(prompt) :]
        assert out.response_ids[row][out.response_mask[row]].tolist() == want.tolist()


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_cached_equals_uncached_and_wrapped_equals_bare(hf_folders, hf_tokenizer, family):
    model, tok = load_model(hf_folders, family), as_tokenizer(hf_tokenizer)
    kwargs = dict(max_new_tokens=10, num_samples=3, temperature=0.9, top_k=50, top_p=0.95, min_p=0.01)
    cached = sample(model, _prompts(tok), generator=torch.Generator().manual_seed(3), **kwargs)
    full = sample(model, _prompts(tok), generator=torch.Generator().manual_seed(3), use_cache=False, **kwargs)
    wrapped = sample(as_model(model), _prompts(tok), generator=torch.Generator().manual_seed(3), **kwargs)
    assert (cached.backend, full.backend) == ("hf", "full")
    assert torch.equal(cached.response_ids, full.response_ids)
    assert torch.equal(cached.response_ids, wrapped.response_ids)


def test_seeded_draws_do_not_depend_on_batch_size(hf_folders, hf_tokenizer):
    model, tok = load_model(hf_folders, "llama"), as_tokenizer(hf_tokenizer)
    kwargs = dict(max_new_tokens=16, num_samples=4, temperature=1.0, top_p=0.9, eos_id=tok.eos_id, pad_id=tok.pad_id)
    together = sample(model, _prompts(tok), generator=torch.Generator().manual_seed(0), **kwargs)
    one_by_one = sample(model, _prompts(tok), generator=torch.Generator().manual_seed(0), batch_size=1, **kwargs)
    assert torch.equal(together.response_ids, one_by_one.response_ids)
    assert torch.equal(together.response_mask, one_by_one.response_mask)
    assert len(set(map(tuple, together.response_ids.tolist()))) > 1  # the draws really are random


def test_eos_ends_rows_and_prompts_never_come_back(hf_folders, hf_tokenizer):
    model, tok = load_model(hf_folders, "llama"), as_tokenizer(hf_tokenizer)
    with torch.no_grad():  # EOS as likely as the most likely first token of a prompt: rows end at varied steps
        first = model(torch.tensor([tok.encode_prompt(PROMPTS[0])])).logits[0, -1].argmax()
        head = model.get_output_embeddings().weight
        head[tok.eos_id] = head[first]
    prompts = _prompts(tok)
    out = sample(model, prompts, max_new_tokens=20, num_samples=8, temperature=3.0, eos_id=tok.eos_id,
                 pad_id=tok.pad_id, generator=torch.Generator().manual_seed(1))  # fmt: skip
    for ids, mask in zip(out.response_ids, out.response_mask, strict=True):
        real = ids[mask].tolist()
        if tok.eos_id in real:
            assert real.index(tok.eos_id) == len(real) - 1  # nothing after the first EOS
        assert (ids[~mask] == tok.pad_id).all()
    assert out.response_ids.shape[0] == len(prompts) * 8
    lengths = out.lengths.tolist()
    assert min(lengths) < 20 and max(lengths) == 20  # some rows stopped at EOS, others ran to the limit


def test_best_of_n_takes_an_hf_model_and_tokenizer(hf_folders, hf_tokenizer):
    from self_rewarding_lm_pytorch import BestOfNSampler

    model = load_model(hf_folders, "llama")
    best = BestOfNSampler(
        model,
        hf_tokenizer,
        lambda texts: [float(len(t)) for t in texts],
        length_sampler=lambda: 4,
        sample_size=3,
        seed=0,
    )
    out = best.generate(["say hello", "the cat"])
    assert len(out) == 2 and all(isinstance(texts, list) and len(texts) == 1 for texts in out)
