"""Best-of-N sampling: draw N responses per query, score them, keep the best.

Shapes: q queries, k candidates per query (the sample size N), b = q * k rows, m new tokens.

Unlike TRL's `BestOfNSampler` (one `generate` call per query, the prompt repeated N times), all
queries and all their samples go through one batched, KV-cached sampler call and one scorer call;
a fixed seed reproduces the output exactly. Best-of-n's KL to the base policy is at most
log n - (n-1)/n, and its win rate over a single base sample at most n/(n+1).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from beartype import beartype
from einops import rearrange
from torch import Tensor

from self_rewarding_lm_pytorch.core.hf_tokenizer import HFTokenizer, is_hf_tokenizer
from self_rewarding_lm_pytorch.core.reward_source import is_reward_model, scoring_fn
from self_rewarding_lm_pytorch.core.sampling_config import SamplingConfig
from self_rewarding_lm_pytorch.core.tokenizer import encode_prompt, to_id_list

__all__ = ["BestOfNSampler", "GenerationConfig", "LengthSampler", "rank_candidates", "sample_responses"]


@dataclass(frozen=True)
class GenerationConfig(SamplingConfig):
    """A `SamplingConfig` (defaults: 32 new tokens, temperature 1) plus `eos_id` (None: the tokenizer's EOS)."""

    max_new_tokens: int | None = 32
    eos_id: int | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.max_new_tokens is None:
            raise ValueError("GenerationConfig needs max_new_tokens")
        if self.eos_id is not None and self.eos_id < 0:
            raise ValueError(f"eos_id must be >= 0 or None, got {self.eos_id}")


class LengthSampler:
    """Draws `max_new_tokens` uniformly from [min_value, max_value), as TRL's `LengthSampler`."""

    @beartype
    def __init__(self, min_value: int, max_value: int):
        if min_value < 1 or max_value <= min_value:
            raise ValueError(f"LengthSampler needs 1 <= min_value < max_value, got ({min_value}, {max_value})")
        self.min_value, self.max_value = min_value, max_value

    def __call__(self, generator: torch.Generator | None = None) -> int:
        return int(torch.randint(self.min_value, self.max_value, (1,), generator=generator))

    def __repr__(self):
        return f"LengthSampler({self.min_value}, {self.max_value})"


def _as_query_list(queries, tokenizer) -> tuple[list[Tensor], list[str]]:
    """One query or a list of them (str, id list, 1-D tensor) or a 2-D tensor of queries -> 1-D long
    tensors to sample from, and each query's text: a string query as given (a chat template renders it
    into the ids only, so a scorer with its own template does not render it twice), ids decoded."""
    if isinstance(queries, str) or (isinstance(queries, Tensor) and queries.ndim == 1):
        queries = [queries]
    elif isinstance(queries, Tensor):
        queries = list(queries)
    elif isinstance(queries, (list, tuple)) and queries and isinstance(queries[0], (int, float)):
        queries = [queries]  # one query given as a list of ids
    out, texts = [], []
    for i, q in enumerate(queries):
        ids = encode_prompt(tokenizer, q) if isinstance(q, str) else to_id_list(q)
        if not ids:
            raise ValueError(f"query {i} is empty: the sampler needs at least one prompt token")
        out.append(torch.tensor(ids, dtype=torch.long))
        texts.append(q if isinstance(q, str) else tokenizer.decode(ids))
    if not out:
        raise ValueError("generate needs at least one query")
    return out, texts


@torch.no_grad()
def sample_responses(
    model,
    tokenizer,
    prompts: list[Tensor],
    *,
    num_samples: int,
    config: SamplingConfig,
    generator: torch.Generator | None = None,
    lengths: Sequence[int] | None = None,
    batch_size: int | None = None,
) -> list[list[str]]:
    """(q, k) response texts: `num_samples` per prompt from ONE sampler call (prompt-major rows).

    `lengths` (q,) caps each query's new tokens: the call samples up to the longest and each row is
    cut at its own query's length, which has exactly the distribution of sampling it alone with that
    cap (a token never depends on the cap), while keeping every query in one batch.
    """
    from self_rewarding_lm_pytorch.core.sampling import sample

    eos_id = getattr(config, "eos_id", None)
    eos = eos_id if eos_id is not None else getattr(tokenizer, "eos_id", None)
    sampling = config.sampling_only()
    if lengths is not None:
        sampling = dataclasses.replace(sampling, max_new_tokens=max(lengths))
    device = next(model.parameters()).device
    out = sample(
        model,
        [p.to(device) for p in prompts],
        sampling=sampling,
        num_samples=num_samples,
        eos_id=eos,
        pad_id=tokenizer.pad_id,
        generator=generator,
        batch_size=batch_size,
    )
    ids, keep = out.response_ids.tolist(), out.response_mask.tolist()  # one host copy, not one per row
    texts = []
    for row, (row_ids, row_keep) in enumerate(zip(ids, keep, strict=True)):
        toks = [t for t, k in zip(row_ids, row_keep, strict=True) if k]
        if lengths is not None:
            toks = toks[: lengths[row // num_samples]]
        texts.append(tokenizer.decode([t for t in toks if t != eos]))
    return [texts[i * num_samples : (i + 1) * num_samples] for i in range(len(prompts))]


def rank_candidates(scores: Tensor, n_keep: int, higher_is_better: bool = True) -> tuple[Tensor, Tensor]:
    """Indices (q, n_keep) of the best candidates per row of `scores` (q, k), best first, and their scores.

    NaN scores (a scorer that could not judge) rank last; ties keep sample order (stable sort).
    """
    key = scores.float() if higher_is_better else -scores.float()
    key = torch.where(torch.isnan(key), torch.full_like(key, -math.inf), key)
    order = torch.sort(key, dim=-1, descending=True, stable=True).indices[:, :n_keep]
    return order, scores.gather(-1, order)


class BestOfNSampler:
    """Generates `sample_size` responses per query and returns the top `n_candidates` texts per query.

    `queries_to_scores(list[str]) -> list[float]` scores query+response texts (response texts
    alone with `score_completion_only=True`); a `RewardModel` may be passed instead and is called
    as `score(queries, responses)`; a scorer with `higher_is_better = False` ranks low scores first.
    `generate` returns, per query, its best texts (query + response, as TRL does), best first; a
    string query is kept as given (scored and returned without the chat template the sampler applied).
    A `length_sampler` draws one `max_new_tokens` per query (in query order), without breaking the
    single batched sampler call. With `seed`, a fresh sampler
    reproduces the same outputs; successive `generate` calls continue one random stream.
    """

    @beartype
    def __init__(
        self,
        model,
        tokenizer,
        queries_to_scores: Callable,
        length_sampler: LengthSampler | Callable[[], int] | None = None,
        sample_size: int = 4,
        n_candidates: int = 1,
        generation_config: SamplingConfig | None = None,
        seed: int | None = None,
        score_completion_only: bool = False,
        batch_size: int | None = None,
    ):
        if sample_size < 1:
            raise ValueError(f"sample_size must be >= 1, got {sample_size}")
        if not 1 <= n_candidates <= sample_size:
            raise ValueError(f"n_candidates must be in [1, sample_size={sample_size}], got {n_candidates}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
        if is_hf_tokenizer(tokenizer):
            tokenizer = HFTokenizer(tokenizer)  # a Hugging Face tokenizer needs no wrapping by hand
        for attr in ("encode", "decode", "pad_id"):
            if not hasattr(tokenizer, attr):
                raise TypeError(f"tokenizer lacks {attr} (see the Tokenizer protocol)")
        self.model, self.tokenizer, self.queries_to_scores = model, tokenizer, queries_to_scores
        self.length_sampler = length_sampler
        self.sample_size, self.n_candidates = sample_size, n_candidates
        self.generation_config = generation_config or GenerationConfig()
        if self.generation_config.max_new_tokens is None and length_sampler is None:
            raise ValueError("generation_config.max_new_tokens is None and there is no length_sampler")
        self.score_completion_only, self.batch_size = score_completion_only, batch_size
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None

    def _draw_length(self) -> int:
        sampler = self.length_sampler
        if isinstance(sampler, LengthSampler):
            return sampler(self.generator)
        assert sampler is not None  # called only when there is a length sampler
        return int(sampler())

    def _score(self, query_texts: list[str], responses: list[str]) -> Tensor:
        if is_reward_model(self.queries_to_scores):  # through the reward source adapter: its own tokenizer
            prompts = [""] * len(responses) if self.score_completion_only else query_texts
            scores = scoring_fn(self.queries_to_scores, name="queries_to_scores")(prompts, responses)
        else:
            texts = (
                responses
                if self.score_completion_only
                else [q + r for q, r in zip(query_texts, responses, strict=True)]
            )
            scores = self.queries_to_scores(texts)
        scores = (
            torch.as_tensor(scores if isinstance(scores, Tensor) else list(scores), dtype=torch.float).detach().cpu()
        )
        if scores.shape != (len(responses),):
            raise ValueError(f"queries_to_scores returned {tuple(scores.shape)} scores for {len(responses)} texts")
        return scores

    def generate(self, queries, return_scores: bool = False):
        """Per query, its `n_candidates` best texts (query + response), best first.

        `queries`: one query or a list (strings, id lists or 1-D tensors), or a 2-D tensor.
        With `return_scores=True` returns `(texts, scores)`, scores also per query, best first.
        """
        prompts, query_texts = _as_query_list(queries, self.tokenizer)
        lengths = [self._draw_length() for _ in prompts] if self.length_sampler is not None else None
        responses = sample_responses(
            self.model,
            self.tokenizer,
            prompts,
            num_samples=self.sample_size,
            config=self.generation_config,
            generator=self.generator,
            lengths=lengths,
            batch_size=self.batch_size,
        )
        flat_queries = [q for q in query_texts for _ in range(self.sample_size)]
        flat_responses = [r for per_query in responses for r in per_query]
        scores = rearrange(self._score(flat_queries, flat_responses), "(q k) -> q k", k=self.sample_size)
        higher_is_better = bool(getattr(self.queries_to_scores, "higher_is_better", True))
        order, best_scores = rank_candidates(scores, self.n_candidates, higher_is_better)
        texts = [[query_texts[i] + responses[i][j] for j in row] for i, row in enumerate(order.tolist())]
        return (texts, best_scores.tolist()) if return_scores else texts
