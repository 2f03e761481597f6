"""The shared prompt cache (each prompt's K/V held once for all its samples) and row compaction give
exactly what expanding the cache into every sample row and never dropping rows gives."""

import pytest
import torch
import torch.nn.functional as F
from x_transformers import Decoder, TransformerWrapper

from self_rewarding_lm_pytorch.core import decode_loop
from self_rewarding_lm_pytorch.core.kv_decode import FastDecoder
from self_rewarding_lm_pytorch.core.prefix_attention import RowLayout, shared_prefix_attention
from self_rewarding_lm_pytorch.core.sampling import sample

V = 48


def make_model(**kwargs):
    torch.manual_seed(0)
    return TransformerWrapper(
        num_tokens=V, max_seq_len=64, attn_layers=Decoder(dim=32, depth=2, heads=4, attn_dim_head=8, **kwargs)
    ).eval()


def make_prompts(lengths, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(V, (n,), generator=gen) for n in lengths]


@pytest.mark.unit
def test_row_layout_by_hand():
    ragged = RowLayout.of(torch.tensor([0, 0, 0, 1, 2, 2]), num_prompts=3)
    assert (ragged.per_prompt, ragged.dense) == (3, False)
    assert ragged.slot.tolist() == [0, 1, 2, 3, 6, 7]
    rows = torch.arange(6.0)
    assert ragged.to_grid(rows).tolist() == [0, 1, 2, 3, 0, 0, 4, 5, 0]
    assert torch.equal(ragged.to_rows(ragged.to_grid(rows)), rows)
    dense = RowLayout.of(torch.tensor([0, 0, 1, 1]), num_prompts=2)
    assert (dense.per_prompt, dense.dense, dense.slot.tolist()) == (2, True, [0, 1, 2, 3])


@pytest.mark.unit
@pytest.mark.parametrize("kv_heads", [4, 2, 1])
@pytest.mark.parametrize("row_prompt", [[0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 2, 2], [0, 2, 2]])
def test_shared_prefix_attention_equals_attention_over_the_expanded_cache(kv_heads, row_prompt):
    """Against SDPA over each row's own copy of [prompt | generated], padding masked, GQA pairing
    query head i with kv head i % g as x-transformers does; prompt 1 is unused in the last layout."""
    gen = torch.Generator().manual_seed(0)
    u, h, d, p, t, scale = 3, 4, 8, 5, 3, 0.3
    row_prompt = torch.tensor(row_prompt)
    b = len(row_prompt)
    q = torch.randn(b, h, d, generator=gen)
    prompt_k, prompt_v = torch.randn(2, u, kv_heads, p, d, generator=gen)
    gen_k, gen_v = torch.randn(2, b, kv_heads, t, d, generator=gen)
    starts = torch.tensor([0, 2, 4])  # left padding of each prompt
    is_pad = torch.arange(p) < starts[:, None]
    bias = torch.zeros(u, p).masked_fill(is_pad, float("-inf"))
    got = shared_prefix_attention(
        q, prompt_k, prompt_v, bias, gen_k, gen_v, RowLayout.of(row_prompt, u), scale
    )  # (b, h, d)
    k = torch.cat((prompt_k[row_prompt], gen_k), dim=2)
    v = torch.cat((prompt_v[row_prompt], gen_v), dim=2)
    head_kv = torch.arange(h) % kv_heads
    mask = torch.cat((~is_pad[row_prompt], torch.ones(b, t, dtype=torch.bool)), dim=1)
    want = F.scaled_dot_product_attention(
        q[:, :, None], k[:, head_kv], v[:, head_kv], attn_mask=mask[:, None, None], scale=scale
    )[:, :, 0]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def expanded(model, prompts, counts, steps, tokens, keep=None, keep_after=None):
    """Logits (b, steps + 1, v) of a FastDecoder; with `keep`, rows are dropped after `keep_after` steps."""
    decoder = FastDecoder(model, prompts, counts, max_new_tokens=steps + 1)
    with torch.no_grad():
        out = [decoder.prefill()]
        for s in range(steps):
            if keep is not None and s == keep_after:
                decoder.select(keep)
                tokens, out = tokens[keep], [o[keep] for o in out]
            out.append(decoder.step(tokens[:, s]))
    return decoder, torch.stack(out, dim=1)


@pytest.mark.stage
@pytest.mark.parametrize("config", [dict(), dict(rotary_pos_emb=True, attn_kv_heads=2)])
def test_shared_cache_matches_the_expanded_cache_and_the_full_forward(config):
    """Samples of one prompt share its cache: the same logits as one row per sample (each prompt
    repeated, so the cache is expanded) and as the model's own forward, with mixed prompt lengths."""
    model = make_model(**config)
    prompts, counts, steps = make_prompts((2, 6, 4)), [3, 1, 4], 4
    tokens = torch.randint(V, (8, steps), generator=torch.Generator().manual_seed(2))
    shared, got = expanded(model, prompts, counts, steps, tokens)
    repeated = [p for p, c in zip(prompts, counts, strict=True) for _ in range(c)]
    rowwise, want = expanded(model, repeated, [1] * 8, steps, tokens)
    assert shared.shared and not rowwise.shared
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    with torch.no_grad():
        for row, prompt in enumerate(repeated):
            full = model(torch.cat((prompt, tokens[row]))[None])[0, len(prompt) - 1 :]
            torch.testing.assert_close(got[row], full, rtol=0, atol=1e-5)


@pytest.mark.stage
def test_dropping_rows_and_whole_prompts_from_the_shared_cache():
    """Compaction leaves a ragged grid (3, 0 and 2 rows left of 3, 1 and 4) and drops prompt 1's cache."""
    model = make_model(rotary_pos_emb=True)
    prompts, counts, steps = make_prompts((2, 6, 4)), [3, 1, 4], 5
    tokens = torch.randint(V, (8, steps), generator=torch.Generator().manual_seed(2))
    keep = torch.tensor([True, True, True, False, False, True, False, True])
    _, whole = expanded(model, prompts, counts, steps, tokens)
    part, got = expanded(model, prompts, counts, steps, tokens, keep=keep, keep_after=2)
    assert len(part.prompt_caches[0][0]) == 2 and not part.layout.dense
    torch.testing.assert_close(got, whole[keep], rtol=0, atol=1e-5)


@pytest.mark.stage
@pytest.mark.parametrize("config", [dict(), dict(rotary_pos_emb=True, attn_kv_heads=2)])
def test_sampling_with_shared_cache_and_compaction_equals_expanded_uncompacted(config, monkeypatch):
    """Token for token, with mixed prompt lengths and rows ending early at EOS: N samples per prompt
    from the shared cache with compaction == each prompt repeated N times (one row each, the expanded
    cache) without compaction. Row r's randomness is a hash of (seed, r, step), and the two calls
    number their rows alike (prompt-major)."""
    model = make_model(**config)
    prompts, n = make_prompts((2, 9, 5, 1)), 4
    kw = dict(max_new_tokens=20, temperature=2.0, return_logprobs=True, backend="fast")
    free = sample(model, prompts, num_samples=n, generator=torch.Generator().manual_seed(3), **kw)
    ends = [sum(token in row for row in free.response_ids.tolist()) for token in range(V)]
    eos = max(range(V), key=ends.__getitem__)  # the token that ends the most rows
    kept = []
    select = FastDecoder.select
    monkeypatch.setattr(FastDecoder, "select", lambda self, keep: (kept.append(int(keep.sum())), select(self, keep)))
    shared = sample(model, prompts, num_samples=n, eos_id=eos, generator=torch.Generator().manual_seed(3), **kw)
    assert kept and kept[0] <= 8  # compaction ran: at least half of the 16 rows had ended
    compactions = len(kept)
    monkeypatch.setattr(decode_loop, "_COMPACT", False)
    repeated = [p for p in prompts for _ in range(n)]
    plain = sample(model, repeated, eos_id=eos, generator=torch.Generator().manual_seed(3), **kw)
    assert len(kept) == compactions and not plain.response_mask.all()  # rows ended, none was dropped
    assert torch.equal(shared.response_ids, plain.response_ids)
    assert torch.equal(shared.response_mask, plain.response_mask)
    torch.testing.assert_close(shared.logprobs, plain.logprobs, rtol=0, atol=1e-5)
