import math

import pytest
import torch

from self_rewarding_lm_pytorch.core import sampling
from self_rewarding_lm_pytorch.core.tokenizer import ByteTokenizer
from self_rewarding_lm_pytorch.generation.best_of_n import (
    BestOfNSampler,
    GenerationConfig,
    LengthSampler,
    rank_candidates,
)
from self_rewarding_lm_pytorch.trainers.reward_model import RewardModel

pytestmark = pytest.mark.unit

QUERIES = ["Hello", "The cat", "1 + 1 ="]
CFG = GenerationConfig(max_new_tokens=6, temperature=1.0)


def ascii_share(text: str) -> float:
    return sum(c.isascii() for c in text) / max(len(text), 1)


class RecordingScorer:
    """queries_to_scores that prefers ASCII-heavy texts and remembers every text it scored."""

    def __init__(self, key=ascii_share):
        self.key, self.seen, self.calls = key, [], 0

    def __call__(self, texts):
        self.calls += 1
        self.seen.extend(texts)
        return [self.key(t) for t in texts]


def make(model, scorer, **kw):
    kw.setdefault("generation_config", CFG)
    return BestOfNSampler(model, ByteTokenizer(), scorer, **kw)


def test_returns_the_candidate_the_scorer_prefers(tiny_model):
    scorer = RecordingScorer()
    out = make(tiny_model, scorer, sample_size=8, seed=0).generate(QUERIES)
    assert len(out) == 3 and all(len(o) == 1 for o in out)
    assert scorer.calls == 1 and len(scorer.seen) == 3 * 8  # one scorer call for all queries
    for i, q in enumerate(QUERIES):
        group = scorer.seen[i * 8 : (i + 1) * 8]  # prompt-major: query i's 8 samples are contiguous
        assert all(t.startswith(q) for t in group)
        best = max(group, key=ascii_share)
        assert out[i][0] == best
        assert ascii_share(best) >= sum(map(ascii_share, group)) / 8


def test_two_candidates_in_score_order(tiny_model):
    scorer = RecordingScorer()
    texts, scores = make(tiny_model, scorer, sample_size=6, n_candidates=2, seed=1).generate(
        QUERIES, return_scores=True
    )
    for i in range(len(QUERIES)):
        group = scorer.seen[i * 6 : (i + 1) * 6]
        top2 = sorted(range(6), key=lambda j: -ascii_share(group[j]))[:2]  # stable: ties keep sample order
        assert texts[i] == [group[j] for j in top2]
        assert scores[i][0] >= scores[i][1]
        assert scores[i] == pytest.approx([ascii_share(t) for t in texts[i]])


def test_sample_size_one(tiny_model):
    scorer = RecordingScorer()
    out, scores = make(tiny_model, scorer, sample_size=1, seed=2).generate(
        torch.tensor(ByteTokenizer().encode("Hi")), return_scores=True
    )
    assert out == [[scorer.seen[0]]] and len(scorer.seen) == 1 and len(scores[0]) == 1


def test_same_seed_same_output_and_one_sampler_call(tiny_model, monkeypatch):
    calls = []
    real = sampling.sample
    monkeypatch.setattr(sampling, "sample", lambda *a, **k: calls.append(len(a[1])) or real(*a, **k))
    a = make(tiny_model, RecordingScorer(), sample_size=4, n_candidates=2, seed=7).generate(QUERIES)
    b = make(tiny_model, RecordingScorer(), sample_size=4, n_candidates=2, seed=7).generate(QUERIES)
    c = make(tiny_model, RecordingScorer(), sample_size=4, n_candidates=2, seed=8).generate(QUERIES)
    assert a == b and a != c
    assert calls == [3, 3, 3]  # one sampler call per generate, each query passed once (not 4 times)


def test_score_completion_only_and_length_sampler(tiny_model):
    scorer = RecordingScorer(key=len)
    sampler = make(
        tiny_model, scorer, sample_size=4, seed=3, score_completion_only=True, length_sampler=LengthSampler(2, 4)
    )
    out = sampler.generate(QUERIES)
    # responses alone reach the scorer; each is at most 3 tokens (decoding never adds characters)
    assert not any(t.startswith(q) for t, q in zip(scorer.seen[::4], QUERIES, strict=True))
    assert all(len(t) <= 3 for t in scorer.seen)
    assert all(o[0].startswith(q) for o, q in zip(out, QUERIES, strict=True))


def test_reward_model_as_scorer(tiny_model):
    torch.manual_seed(0)
    rm = RewardModel(num_tokens=259, max_seq_len=64, dim=16, depth=1, heads=2)
    texts, scores = make(tiny_model, rm, sample_size=4, seed=4).generate(QUERIES, return_scores=True)
    for (text,), (score,), q in zip(texts, scores, QUERIES, strict=True):
        assert score == pytest.approx(rm.score([q], [text[len(q) :]]).item(), abs=1e-5)


def test_rank_candidates_nan_last_ties_stable():
    """Row [1, nan, 3, 3]: best first is 3 (index 2), 3 (index 3, tie keeps order), 1, nan."""
    order, best = rank_candidates(torch.tensor([[1.0, math.nan, 3.0, 3.0]]), 4)
    assert order.tolist() == [[2, 3, 0, 1]]
    order, best = rank_candidates(torch.tensor([[1.0, math.nan, 3.0, 0.5]]), 2, higher_is_better=False)
    assert order.tolist() == [[3, 0]] and best.tolist() == [[0.5, 1.0]]


def test_bad_arguments_raise_early(tiny_model):
    with pytest.raises(ValueError, match="n_candidates"):
        make(tiny_model, RecordingScorer(), sample_size=2, n_candidates=3)
    with pytest.raises(ValueError, match="sample_size"):
        make(tiny_model, RecordingScorer(), sample_size=0)
    for bad in (dict(temperature=-1.0), dict(top_p=0.0), dict(top_k=0), dict(min_p=1.0), dict(max_new_tokens=0)):
        with pytest.raises(ValueError):
            GenerationConfig(**bad)
    with pytest.raises(ValueError, match="min_value < max_value"):
        LengthSampler(4, 4)
    with pytest.raises(ValueError, match="returned"):
        make(tiny_model, lambda texts: [0.0], sample_size=2).generate(QUERIES)
    with pytest.raises(ValueError, match="empty"):
        make(tiny_model, RecordingScorer()).generate([[]])


def test_length_sampler_range():
    g = torch.Generator().manual_seed(0)
    draws = {LengthSampler(3, 6)(g) for _ in range(200)}
    assert draws == {3, 4, 5}  # half-open, as TRL's


def test_micro_batching_does_not_change_the_output(tiny_model):
    whole = make(tiny_model, RecordingScorer(), sample_size=4, seed=9).generate(QUERIES)
    micro = make(tiny_model, RecordingScorer(), sample_size=4, seed=9, batch_size=5).generate(QUERIES)
    assert whole == micro


def test_lower_is_better_scorer(tiny_model):
    scorer = RecordingScorer()
    scorer.higher_is_better = False
    out = make(tiny_model, scorer, sample_size=6, seed=10).generate(QUERIES)
    for i in range(len(QUERIES)):
        assert out[i][0] == min(scorer.seen[i * 6 : (i + 1) * 6], key=ascii_share)
