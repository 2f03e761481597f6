import math

import pytest
import torch
from conftest import tiny_lm

from self_rewarding_lm_pytorch.core.files import read_jsonl
from self_rewarding_lm_pytorch.core.tokenizer import ByteTokenizer
from self_rewarding_lm_pytorch.generation.best_of_n import GenerationConfig
from self_rewarding_lm_pytorch.generation.synthetic import PerplexityScorer, generate_synthetic_dataset

PROMPTS = [f"prompt {i}:" for i in range(7)]
CFG = GenerationConfig(max_new_tokens=5)


def ascii_share(prompts, responses):
    return [sum(c.isascii() for c in r) / max(len(r), 1) for r in responses]


@pytest.mark.unit
def test_uniform_model_perplexity_is_vocab_size():
    """All-zero logits are uniform over 259 ids, so every token has log p = -log 259 and the
    perplexity of any response (its bytes plus EOS) is exactly 259."""
    lm = tiny_lm(max_seq_len=32, dim=16)
    with torch.no_grad():
        lm.to_logits.weight.zero_()
        if lm.to_logits.bias is not None:
            lm.to_logits.bias.zero_()
    ppl = PerplexityScorer(lm, ByteTokenizer())(["a", "longer prompt"], ["xyz", "q"])
    assert torch.allclose(ppl, torch.full((2,), 259.0), rtol=1e-4)


@pytest.mark.stage
def test_perplexity_scorer_prefers_the_trained_sentence(tiny_model, tmp_path):
    from self_rewarding_lm_pytorch.trainers.sft import SFTTrainer

    sentence = " the cat sat on the mat"
    SFTTrainer(
        tiny_model,
        [("Say:", sentence)] * 8,
        tokenizer=ByteTokenizer(),
        batch_size=4,
        num_train_steps=40,
        learning_rate=3e-3,
        progress=False,
        accelerate_kwargs=dict(cpu=True),
        checkpoint_folder=tmp_path / "sft",
    )()
    others = [" a dog ran in the park", " the mat sat on the cat", " qwzx vbnm plok"]
    ppl = PerplexityScorer(tiny_model, ByteTokenizer())(["Say:"] * 4, [sentence, *others])
    assert int(ppl.argmin()) == 0
    assert ppl[0] < 0.1 * min(ppl[1], ppl[3])  # unrelated texts are far worse; the anagram (2) only a little


@pytest.mark.stage
def test_writes_kept_responses_best_first(tiny_model, tmp_path):
    out = tmp_path / "syn.jsonl"
    stats = generate_synthetic_dataset(
        tiny_model,
        PROMPTS,
        ascii_share,
        out=out,
        n=4,
        keep=2,
        generation_config=CFG,
        prompts_per_batch=3,
        progress=False,
    )
    recs = read_jsonl(out)
    assert stats == dict(prompts_done_before=0, prompts_written=7, records_written=14, prompts_without_score=0)
    assert [r["prompt_index"] for r in recs] == [i for i in range(7) for _ in range(2)]
    for first, second in zip(recs[::2], recs[1::2], strict=True):
        assert first["prompt"] == PROMPTS[first["prompt_index"]] and "response" in first
        assert (first["rank"], second["rank"]) == (0, 1)
        assert first["score"] >= second["score"] >= max(first["discarded_scores"])
        assert len(first["discarded_scores"]) == 2 and first["num_kept"] == 2
        assert first["score"] == pytest.approx(ascii_share(None, [first["response"]])[0])


@pytest.mark.stage
def test_lower_is_better_scorer_and_nan_never_kept(tiny_model, tmp_path):
    def lengthy(prompts, responses):
        return [math.nan if i % 4 == 0 else float(len(r) + i % 4) for i, r in enumerate(responses)]

    lengthy.higher_is_better = False
    out = tmp_path / "syn.jsonl"
    generate_synthetic_dataset(
        tiny_model, PROMPTS[:3], lengthy, out=out, n=4, keep=1, generation_config=CFG, progress=False
    )
    for rec in read_jsonl(out):
        assert rec["score"] <= min(s for s in rec["discarded_scores"] if s is not None)
        assert None in rec["discarded_scores"]  # the NaN candidate was discarded, written as null


@pytest.mark.stage
def test_resume_after_partial_write_matches_uninterrupted(tiny_model, tmp_path):
    kw = dict(n=3, keep=2, generation_config=CFG, prompts_per_batch=2, seed=5, progress=False)
    full = tmp_path / "full.jsonl"
    generate_synthetic_dataset(tiny_model, PROMPTS, ascii_share, out=full, **kw)
    lines = full.read_text().splitlines(keepends=True)
    part = tmp_path / "part.jsonl"
    # 5 whole records (prompts 0 and 1 done, prompt 2 half-written) then half of a 6th line: a crash
    part.write_text("".join(lines[:5]) + lines[5][:20])
    stats = generate_synthetic_dataset(tiny_model, PROMPTS, ascii_share, out=part, **kw)
    assert stats["prompts_done_before"] == 2 and stats["prompts_written"] == 5
    assert part.read_text() == full.read_text()
    again = generate_synthetic_dataset(tiny_model, PROMPTS, ascii_share, out=part, **kw)
    assert again["prompts_written"] == 0 and part.read_text() == full.read_text()


@pytest.mark.unit
def test_resume_with_other_prompts_is_an_error(tiny_model, tmp_path):
    out = tmp_path / "syn.jsonl"
    generate_synthetic_dataset(
        tiny_model, PROMPTS[:2], ascii_share, out=out, n=2, generation_config=CFG, progress=False
    )
    with pytest.raises(ValueError, match="same prompt list"):
        generate_synthetic_dataset(
            tiny_model, ["other"], ascii_share, out=out, n=2, generation_config=CFG, progress=False
        )


@pytest.mark.stage
def test_output_feeds_sft(tiny_model, tmp_path):
    from self_rewarding_lm_pytorch.trainers.sft import SFTTrainer

    out = tmp_path / "syn.jsonl"
    generate_synthetic_dataset(
        tiny_model, PROMPTS[:4], ascii_share, out=out, n=2, generation_config=CFG, progress=False
    )
    before = [p.detach().clone() for p in tiny_model.parameters()]
    SFTTrainer(
        tiny_model,
        read_jsonl(out),
        tokenizer=ByteTokenizer(),
        batch_size=2,
        num_train_steps=2,
        progress=False,
        accelerate_kwargs=dict(cpu=True),
        checkpoint_folder=tmp_path / "sft",
    )()
    assert any(not torch.equal(a, b) for a, b in zip(before, tiny_model.parameters(), strict=True))


@pytest.mark.unit
def test_bad_arguments(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="keep"):
        generate_synthetic_dataset(tiny_model, PROMPTS, ascii_share, out=tmp_path / "x.jsonl", n=2, keep=3)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        generate_synthetic_dataset(tiny_model, ["a", ""], ascii_share, out=tmp_path / "x.jsonl")
    with pytest.raises(TypeError, match="scorer"):
        generate_synthetic_dataset(tiny_model, ["a"], 3, out=tmp_path / "x.jsonl")
    with pytest.raises(ValueError, match="returned"):
        generate_synthetic_dataset(
            tiny_model, ["a"], lambda p, r: [1.0], out=tmp_path / "x.jsonl", n=2, generation_config=CFG, progress=False
        )


@pytest.mark.stage
def test_reward_model_scorer_and_dataset_prompts(tiny_model, tmp_path):
    from self_rewarding_lm_pytorch.core.batching import create_mock_dataset
    from self_rewarding_lm_pytorch.trainers.reward_model import RewardModel

    torch.manual_seed(0)
    rm = RewardModel(num_tokens=259, max_seq_len=64, dim=16, depth=1, heads=2)
    out = tmp_path / "syn.jsonl"
    generate_synthetic_dataset(
        tiny_model, create_mock_dataset(2, "mock prompt"), rm, out=out, n=3, generation_config=CFG, progress=False
    )
    for rec in read_jsonl(out):
        assert rec["score"] == pytest.approx(rm.score([rec["prompt"]], [rec["response"]]).item(), abs=1e-5)
        assert rec["score"] >= max(rec["discarded_scores"])
