"""Tests for the sampler: filters by hand, backends against each other and against a reference loop."""

import math

import pytest
import torch
from einops.layers.torch import Rearrange
from x_transformers import Decoder, TransformerWrapper

from self_rewarding_lm_pytorch.core.kv_decode import FastDecoder, FullStepper, XCacheStepper
from self_rewarding_lm_pytorch.core.sampling import (
    UnsupportedModelError,
    fast_decode_support,
    filter_logits,
    sample,
    sample_from_logits,
    splitmix64,
    xcache_support,
)
from self_rewarding_lm_pytorch.core.token_draws import step_uniforms
from self_rewarding_lm_pytorch.core.tokenizer import ByteTokenizer

V = 48
NEG = float("-inf")
CONFIGS = {
    "absolute": dict(),
    "rotary": dict(rotary_pos_emb=True),
    "gqa": dict(rotary_pos_emb=True, attn_kv_heads=2),
    "one_kv_head": dict(attn_one_kv_head=True),
    "rmsnorm_glu_sandwich": dict(use_rmsnorm=True, ff_glu=True, sandwich_norm=True),
    "post_norm": dict(pre_norm=False),
}


def make_model(max_seq_len=64, depth=2, **kwargs):
    torch.manual_seed(0)
    return TransformerWrapper(
        num_tokens=V,
        max_seq_len=max_seq_len,
        attn_layers=Decoder(dim=32, depth=depth, heads=4, attn_dim_head=8, **kwargs),
    )


def make_prompts(lengths=(3, 7, 1, 5), seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(V, (n,), generator=gen) for n in lengths]


def reference_greedy(model, prompt, steps):
    """Independent reference: re-run the full forward, append the argmax, keep only the new tokens."""
    seq = prompt.clone()
    with torch.no_grad():
        for _ in range(steps):
            seq = torch.cat((seq, model(seq[None])[0, -1].argmax()[None]))
    return seq[len(prompt) :]


def probs_to_logits(probs):
    return torch.tensor([[math.log(p) if p > 0 else NEG for p in probs]])


# ---- pure functions, exact values ----------------------------------------------------------------


@pytest.mark.unit
def test_top_k_keeps_the_k_largest():
    out = filter_logits(torch.tensor([[1.0, 3.0, 2.0, 0.0]]), top_k=2)
    assert out.tolist() == [[NEG, 3.0, 2.0, NEG]]


@pytest.mark.unit
def test_top_p_keeps_smallest_prefix_reaching_p():
    """Probabilities (0.15, 0.5, 0.05, 0.3): sorted 0.5, 0.3, 0.15, 0.05 with mass before each
    0, 0.5, 0.8, 0.95. A token stays iff the mass before it is < p: p=0.4 keeps {0.5};
    p=0.75 keeps {0.5, 0.3}; p=0.9 keeps all but 0.05."""
    logits = probs_to_logits([0.15, 0.5, 0.05, 0.3])
    kept = lambda p: torch.isfinite(filter_logits(logits, top_p=p))[0].tolist()
    assert kept(0.4) == [False, True, False, False]
    assert kept(0.75) == [False, True, False, True]
    assert kept(0.9) == [True, True, False, True]
    assert kept(1.0) == [True, True, True, True]


@pytest.mark.unit
def test_min_p_keeps_tokens_above_fraction_of_the_max():
    """Max probability 0.5: min_p=0.25 -> threshold 0.125 drops only 0.05; min_p=0.5 -> 0.25 drops 0.15 too."""
    logits = probs_to_logits([0.15, 0.5, 0.05, 0.3])
    assert torch.isfinite(filter_logits(logits, min_p=0.25))[0].tolist() == [True, True, False, True]
    assert torch.isfinite(filter_logits(logits, min_p=0.5))[0].tolist() == [False, True, False, True]


@pytest.mark.unit
def test_filters_compose_on_the_renormalized_distribution():
    """top_k=3 leaves (0.5, 0.3, 0.15)/0.95 = (0.526, 0.316, 0.158); top_p=0.8: masses before
    0, 0.526, 0.842, so the 0.15 token goes too."""
    logits = probs_to_logits([0.15, 0.5, 0.05, 0.3])
    assert torch.isfinite(filter_logits(logits, top_k=3, top_p=0.8))[0].tolist() == [False, True, False, True]


@pytest.mark.unit
def test_inverse_cdf_draw_by_hand():
    """Probabilities (0.25, 0, 0.75): CDF (0.25, 0.25, 1). u=0.1 -> 0, u=0.3 -> 2, and no u in a fine
    sweep of [0, 1) (including the edge 0.25) draws token 1, whose CDF interval is empty.
    (0.4, 0.6, 0) with u just below 1 -> 1, not the zero-probability token 2."""
    logits = probs_to_logits([0.25, 0.0, 0.75])
    u = torch.tensor([0.0, 0.1, 0.3, 0.9], dtype=torch.float64)
    assert sample_from_logits(logits.expand(4, 3), u).tolist() == [0, 0, 2, 2]
    sweep = torch.cat(
        (
            torch.linspace(0, 1 - 2**-53, 20001, dtype=torch.float64),
            torch.tensor([0.25, 0.25 - 2**-54, 0.25 + 2**-54], dtype=torch.float64),
        )
    )
    drawn = sample_from_logits(logits.expand(len(sweep), 3), sweep)
    assert 1 not in drawn.tolist() and {0, 2} == set(drawn.tolist())
    last_empty = probs_to_logits([0.4, 0.6, 0.0])
    assert sample_from_logits(last_empty, torch.tensor([1 - 2**-53], dtype=torch.float64)).tolist() == [1]


@pytest.mark.unit
def test_splitmix64_matches_python_reference():
    def reference(x):
        mask = (1 << 64) - 1
        z = (x + 0x9E3779B97F4A7C15) & mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        z ^= z >> 31
        return z - (1 << 64) if z >= 1 << 63 else z

    inputs = [0, 1, 12345, -1, -(2**63), 2**63 - 1]
    assert splitmix64(torch.tensor(inputs)).tolist() == [reference(x & ((1 << 64) - 1)) for x in inputs]


@pytest.mark.unit
def test_draw_frequencies_match_probabilities():
    """4000 draws from (0.1, 0.2, 0.7) with hashed uniforms: counts within 4.5 binomial sigmas."""
    keys = splitmix64(torch.arange(4000))
    tokens = sample_from_logits(probs_to_logits([0.1, 0.2, 0.7]).expand(4000, 3), step_uniforms(keys, 0))
    for token, p in enumerate((0.1, 0.2, 0.7)):
        count = int((tokens == token).sum())
        assert abs(count - 4000 * p) < 4.5 * math.sqrt(4000 * p * (1 - p))


# ---- backends agree ----------------------------------------------------------------------------


@pytest.mark.stage
@pytest.mark.parametrize("name", list(CONFIGS))
def test_fast_decoder_logits_match_full_forward(name):
    model = make_model(**CONFIGS[name]).eval()
    assert fast_decode_support(model) is None
    prompts = make_prompts()
    follow = torch.randint(V, (4, 3), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        decoder = FastDecoder(model, prompts, [1, 1, 1, 1], max_new_tokens=4)
        got = torch.stack([decoder.prefill()] + [decoder.step(follow[:, s]) for s in range(3)], dim=1)
        for row, prompt in enumerate(prompts):
            want = model(torch.cat((prompt, follow[row]))[None])[0, -4:]
            torch.testing.assert_close(got[row], want, rtol=0, atol=1e-5)


@pytest.mark.stage
@pytest.mark.parametrize("name", [*list(CONFIGS), "alibi_fallback"])
def test_greedy_identical_across_backends_and_reference(name):
    model = make_model(**CONFIGS.get(name, dict(alibi_pos_bias=True)))
    prompts = make_prompts()
    outs = {
        b: sample(model, prompts, max_new_tokens=6, temperature=0, backend=b) for b in ("auto", "xtransformers", "full")
    }
    assert outs["auto"].backend == ("xtransformers" if name == "alibi_fallback" else "fast")
    for out in outs.values():
        assert out.response_mask.all() and out.response_ids.device.type == "cpu"
        for row, prompt in enumerate(prompts):
            assert out.response_ids[row].tolist() == reference_greedy(model, prompt, 6).tolist()
    assert torch.equal(
        sample(model, prompts, max_new_tokens=6, temperature=0, use_cache=False).response_ids, outs["auto"].response_ids
    )


@pytest.mark.stage
@pytest.mark.parametrize("backend", ["fast", "xtransformers", "full"])
def test_mixed_length_batch_equals_each_prompt_alone(backend):
    model = make_model(rotary_pos_emb=True)
    prompts = make_prompts()
    batched = sample(model, prompts, max_new_tokens=5, temperature=0, backend=backend).response_ids
    for row, prompt in enumerate(prompts):
        alone = sample(model, [prompt], max_new_tokens=5, temperature=0, backend=backend).response_ids
        assert batched[row].tolist() == alone[0].tolist()


@pytest.mark.unit
def test_unsupported_configs_are_detected_and_fall_back():
    assert "alibi" in fast_decode_support(make_model(alibi_pos_bias=True))
    with pytest.raises(UnsupportedModelError):
        sample(make_model(alibi_pos_bias=True), make_prompts(), max_new_tokens=2, backend="fast")
    # A change the whitelist does not inspect (heads merged in another order) is caught by the probe.
    model = make_model()
    model.attn_layers.layers[0][1].merge_heads = Rearrange("b h n d -> b n (d h)")
    assert "probe" in fast_decode_support(model)
    assert sample(model, make_prompts(), max_new_tokens=2, temperature=0).backend == "xtransformers"


@pytest.mark.stage
def test_wrong_x_transformers_cache_is_detected():
    """Token shifting passes x-transformers' can_cache_kv, yet its cached decode is wrong: the probe
    sends such a model to the full forward, which matches the reference loop."""
    model = make_model(shift_tokens=1)
    assert model.can_cache_kv and "probe" in xcache_support(model)
    with pytest.raises(UnsupportedModelError):
        sample(model, make_prompts(), max_new_tokens=2, backend="xtransformers")
    out = sample(model, make_prompts(), max_new_tokens=5, temperature=0)
    assert out.backend == "full"
    for row, prompt in enumerate(make_prompts()):
        assert out.response_ids[row].tolist() == reference_greedy(model, prompt, 5).tolist()


# ---- randomness -------------------------------------------------------------------------------


@pytest.mark.stage
def test_same_seed_same_samples_and_independent_of_batching_and_backend():
    model = make_model(rotary_pos_emb=True)
    prompts = make_prompts()
    run = lambda seed, **kw: sample(
        model,
        prompts,
        max_new_tokens=6,
        num_samples=3,
        top_p=0.95,
        generator=torch.Generator().manual_seed(seed),
        return_logprobs=True,
        **kw,
    )
    first = run(0)
    assert torch.equal(first.response_ids, run(0).response_ids)
    assert not torch.equal(first.response_ids, run(1).response_ids)
    for kwargs in (dict(batch_size=1), dict(batch_size=4), dict(backend="xtransformers"), dict(backend="full")):
        again = run(0, **kwargs)
        assert torch.equal(first.response_ids, again.response_ids), kwargs
        torch.testing.assert_close(first.logprobs, again.logprobs, rtol=0, atol=1e-5)
    torch.manual_seed(5)
    a = sample(model, prompts, max_new_tokens=4).response_ids
    torch.manual_seed(5)
    assert torch.equal(a, sample(model, prompts, max_new_tokens=4).response_ids)


@pytest.mark.unit
def test_sampled_tokens_stay_inside_the_filtered_set():
    model = make_model()
    prompt = make_prompts((4,))
    with torch.no_grad():
        logits = model(prompt[0][None])[0, -1] / 0.7
    for kwargs in (dict(top_k=3), dict(top_p=0.5), dict(min_p=0.3), dict(top_k=5, top_p=0.6)):
        allowed = set(torch.isfinite(filter_logits(logits[None], **kwargs))[0].nonzero()[:, 0].tolist())
        out = sample(
            model,
            prompt,
            max_new_tokens=1,
            num_samples=300,
            temperature=0.7,
            generator=torch.Generator().manual_seed(0),
            **kwargs,
        )
        drawn = set(out.response_ids[:, 0].tolist())
        assert drawn <= allowed, kwargs
        if len(allowed) > 1:
            assert len(drawn) > 1, kwargs


@pytest.mark.unit
def test_logprobs_are_the_raw_model_log_probabilities():
    model = make_model()
    prompts = make_prompts((2, 5))
    out = sample(
        model,
        prompts,
        max_new_tokens=4,
        temperature=1.3,
        top_k=10,
        return_logprobs=True,
        generator=torch.Generator().manual_seed(3),
    )
    with torch.no_grad():
        for row, prompt in enumerate(prompts):
            seq = torch.cat((prompt, out.response_ids[row]))
            logp = model(seq[None])[0].log_softmax(-1)[len(prompt) - 1 : -1]
            want = logp.gather(-1, out.response_ids[row][:, None])[:, 0]
            torch.testing.assert_close(out.logprobs[row], want, rtol=0, atol=1e-5)


# ---- EOS, layout, modes, validation -------------------------------------------------------------


@pytest.mark.stage
@pytest.mark.parametrize("backend", ["fast", "xtransformers", "full"])
def test_eos_stops_rows_independently_and_keeps_the_prefix(backend):
    """With the same generator, a row's tokens before its first EOS equal the run without EOS
    (randomness is per row and step, so other rows stopping or being dropped changes nothing)."""
    model = make_model()
    prompts = make_prompts()
    kw = dict(max_new_tokens=12, num_samples=3, temperature=1.5, backend=backend)
    free = sample(model, prompts, generator=torch.Generator().manual_seed(4), **kw)
    rows_with = [sum(token in row for row in free.response_ids.tolist()) for token in range(V)]
    eos = max(range(V), key=rows_with.__getitem__)  # the token that ends the most rows
    out = sample(model, prompts, eos_id=eos, pad_id=-1, generator=torch.Generator().manual_seed(4), **kw)
    stopped = 0
    for row in range(len(out.response_ids)):
        free_row = free.response_ids[row].tolist()
        end = free_row.index(eos) + 1 if eos in free_row else len(free_row)
        stopped += end < len(free_row)
        assert out.response_mask[row].tolist() == [True] * end + [False] * (out.response_ids.shape[1] - end)
        assert out.response_ids[row, :end].tolist() == free_row[:end]
        assert (out.response_ids[row, end:] == -1).all()
    assert stopped >= 4


@pytest.mark.stage
@pytest.mark.parametrize("stepper", [FastDecoder, XCacheStepper, FullStepper])
def test_dropping_finished_rows_leaves_the_others_unchanged(stepper):
    """select() (compaction of finished rows) keeps the kept rows' logits exactly on track."""
    model = make_model(rotary_pos_emb=True).eval()
    prompts = make_prompts((2, 5) if stepper is FastDecoder else (4, 4))  # fallbacks group by length
    tokens = torch.randint(V, (6, 4), generator=torch.Generator().manual_seed(3))
    keep = torch.tensor([True, False, False, True, True, False])
    with torch.no_grad():
        whole, part = stepper(model, prompts, [3, 3], 6), stepper(model, prompts, [3, 3], 6)
        whole.prefill(), part.prefill()
        for s in range(2):
            whole.step(tokens[:, s]), part.step(tokens[:, s])
        part.select(keep)
        for s in range(2, 4):
            torch.testing.assert_close(part.step(tokens[keep, s]), whole.step(tokens[:, s])[keep], rtol=0, atol=1e-5)


@pytest.mark.unit
def test_loop_ends_when_all_rows_finished():
    """Greedy with 4 identical samples: all rows end at the same EOS, so the model's head runs once
    for the prompt plus once per fed-back token, and the output is only as wide as the answer."""
    model = make_model()
    prompt = make_prompts((5,))
    greedy = reference_greedy(model, prompt[0], 10).tolist()
    end = next(k + 1 for k in range(2, 10) if greedy[k] not in greedy[:k])
    eos = greedy[end - 1]
    assert fast_decode_support(model) is None  # probe first: it runs the head itself
    calls = []
    model.to_logits.register_forward_hook(lambda *args: calls.append(1))
    out = sample(model, prompt, max_new_tokens=10, num_samples=4, temperature=0, eos_id=eos)
    assert out.response_ids.shape == (4, end) and out.response_mask.all()
    assert len(calls) == end  # prefill + (end - 1) steps
    assert out.texts(ByteTokenizer()) == [ByteTokenizer().decode(greedy[: end - 1])] * 4


@pytest.mark.stage
def test_prompt_major_rows_and_prompt_encoded_once():
    model = make_model()
    prompts = make_prompts((3, 6))
    assert fast_decode_support(model) is None  # probe first: it runs the embedding itself
    batches = []
    model.token_emb.register_forward_hook(lambda mod, args, out: batches.append(args[0].shape[0]))
    out = sample(model, prompts, max_new_tokens=3, num_samples=3, temperature=0)
    assert batches[0] == 2 and set(batches[1:]) == {6}  # the prompts once, then 6 rows per step
    assert out.prompt_index.tolist() == [0, 0, 0, 1, 1, 1]
    for row in range(6):
        assert out.response_ids[row].tolist() == reference_greedy(model, prompts[row // 3], 3).tolist()


@pytest.mark.unit
def test_train_eval_modes_restored_and_eval_during_sampling():
    model = make_model().train()
    model.attn_layers.layers[0][1].eval()
    before = {name: m.training for name, m in model.named_modules()}
    seen = []
    model.to_logits.register_forward_hook(lambda mod, *a: seen.append(model.training or mod.training))
    sample(model, make_prompts(), max_new_tokens=2)
    assert not any(seen)
    assert {name: m.training for name, m in model.named_modules()} == before


@pytest.mark.stage
def test_max_seq_len_is_respected():
    absolute = make_model(max_seq_len=12)
    with pytest.raises(ValueError, match="max_seq_len"):
        sample(absolute, make_prompts((5,)), max_new_tokens=8)
    assert sample(absolute, make_prompts((5,)), max_new_tokens=7).response_ids.shape == (1, 7)
    rotary = make_model(max_seq_len=12, rotary_pos_emb=True)  # no absolute positions: may run past
    fast = sample(rotary, make_prompts((5,)), max_new_tokens=10, temperature=0)
    full = sample(rotary, make_prompts((5,)), max_new_tokens=10, temperature=0, use_cache=False)
    assert torch.equal(fast.response_ids, full.response_ids)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(prompts=[]),
        dict(prompts=[torch.zeros(2, 3, dtype=torch.long)]),
        dict(prompts=[torch.tensor([V])]),
        dict(prompts=[torch.tensor([1.5, 2.0])]),
        dict(prompts=[torch.tensor([], dtype=torch.long)]),
        dict(temperature=-1.0),
        dict(top_p=0.0),
        dict(top_k=0),
        dict(min_p=1.5),
        dict(max_new_tokens=0),
        dict(num_samples=0),
        dict(batch_size=0),
        dict(backend="magic"),
        dict(use_cache=False, backend="fast"),
    ],
)
@pytest.mark.unit
def test_bad_arguments_raise_value_error(kwargs):
    args = {"prompts": make_prompts((3,)), "max_new_tokens": 2, **kwargs}
    with pytest.raises(ValueError):
        sample(make_model(), args.pop("prompts"), **args)


@pytest.mark.unit
def test_whole_number_float_prompts_are_accepted():
    model = make_model()
    ids = make_prompts((4,))
    want = sample(model, ids, max_new_tokens=3, temperature=0).response_ids
    assert torch.equal(sample(model, [ids[0].float()], max_new_tokens=3, temperature=0).response_ids, want)


@pytest.mark.unit
def test_any_causal_model_runs_on_the_full_backend():
    torch.manual_seed(0)
    bigram = torch.nn.Sequential(torch.nn.Embedding(V, 16), torch.nn.Linear(16, V))
    out = sample(bigram, make_prompts((2, 4)), max_new_tokens=3, temperature=0)
    assert out.backend == "full"
    with torch.no_grad():
        first = bigram(make_prompts((2, 4))[0])[-1].argmax()
    assert out.response_ids[0, 0] == first
