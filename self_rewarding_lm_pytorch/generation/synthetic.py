"""Best-of-N synthetic data: sample N responses per prompt, score them, keep the best to a JSONL file.

Shapes: q prompts in a chunk, k candidates per prompt (N), b = q * k rows, n sequence.

The file feeds SFT directly (rejection-sampling fine-tuning): one record per kept response,
`{"prompt", "response", "score", "rank", "prompt_index", "num_kept", "discarded_scores"}`.
Prompts are processed in fixed chunks, each sampled with its own seed (`seed`, chunk index), so a
resumed run writes exactly the records an uninterrupted run would have written.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import torch
from beartype import beartype
from einops import rearrange
from torch import Tensor
from tqdm.auto import tqdm

from self_rewarding_lm_pytorch.core.batching import collate_examples, encode_example
from self_rewarding_lm_pytorch.core.distributed import Shard
from self_rewarding_lm_pytorch.core.files import JsonlAppender, resume_jsonl
from self_rewarding_lm_pytorch.core.reward_source import Scorer, scoring_fn
from self_rewarding_lm_pytorch.core.sampling_config import SamplingConfig
from self_rewarding_lm_pytorch.core.seeding import derive_seed
from self_rewarding_lm_pytorch.core.tokenizer import as_tokenizer, encode_prompt
from self_rewarding_lm_pytorch.generation.best_of_n import GenerationConfig, rank_candidates, sample_responses

__all__ = ["PerplexityScorer", "generate_synthetic_dataset"]


class PerplexityScorer:
    """`(prompts, responses) -> (b,)` perplexity of each response (EOS included) given its prompt under `lm`.

    Lower is better (`higher_is_better = False`): perplexity = exp(-mean token log-prob).
    An empty prompt is replaced by the tokenizer's BOS id when it has one (the first token of a
    sequence has no prediction, so it cannot be scored).
    """

    higher_is_better = False

    @beartype
    def __init__(self, lm, tokenizer: Any = None, *, batch_size: int = 16, max_seq_len: int | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.lm, self.tokenizer, self.batch_size = lm, as_tokenizer(tokenizer), batch_size
        self.max_seq_len = max_seq_len or getattr(lm, "max_seq_len", None)

    def _example(self, prompt, response):
        if isinstance(prompt, str) and not self.tokenizer.encode(prompt):
            bos = getattr(self.tokenizer, "bos_id", None)
            if bos is None:
                raise ValueError("PerplexityScorer needs a non-empty prompt (or a tokenizer with bos_id)")
            prompt = [bos]
        return encode_example(self.tokenizer, prompt, response, max_len=self.max_seq_len)

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> Tensor:
        from self_rewarding_lm_pytorch.core.logprobs import model_sequence_logprobs

        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        was_training, device = self.lm.training, next(self.lm.parameters()).device
        self.lm.eval()
        try:
            out = []
            for s in range(0, len(prompts), self.batch_size):
                rows = [
                    self._example(p, r)
                    for p, r in zip(prompts[s : s + self.batch_size], responses[s : s + self.batch_size], strict=True)
                ]
                batch = collate_examples(rows, self.tokenizer.pad_id)
                mean_lp = model_sequence_logprobs(
                    self.lm, batch["input_ids"].to(device), batch["is_response"].to(device), reduction="mean"
                )
                out.append(torch.exp(-mean_lp).float().cpu())
        finally:
            self.lm.train(was_training)
        return torch.cat(out) if out else torch.zeros(0)


def _finite_or_none(x: float):
    return x if math.isfinite(x) else None  # strict JSON has no NaN


def _completed_prompts(path: Path, prompts: list[str]) -> set[int]:
    """Prompt indices whose kept records are all in the file; drops the records of a half-written prompt."""

    def complete(records: list[dict]) -> list[dict]:
        by_prompt: dict[int, list[dict]] = {}
        for rec in records:
            i = rec.get("prompt_index")
            if not isinstance(i, int) or not 0 <= i < len(prompts) or rec.get("prompt") != prompts[i]:
                raise ValueError(
                    f"{path} holds a record for prompt_index {i!r} that is not in these prompts: "
                    "resume only with the same prompt list, or write to a new file"
                )
            by_prompt.setdefault(i, []).append(rec)
        done = {i for i, recs in by_prompt.items() if len(recs) == recs[0]["num_kept"]}
        # a crash between two records of one prompt: that prompt is redone whole
        return [r for r in records if r["prompt_index"] in done]

    return {r["prompt_index"] for r in resume_jsonl(path, complete)}


@beartype
def generate_synthetic_dataset(
    model,
    prompts: Any,
    scorer: Any,
    *,
    out: str | os.PathLike,
    tokenizer: Any = None,
    n: int = 4,
    keep: int = 1,
    generation_config: SamplingConfig | None = None,
    seed: int = 0,
    prompts_per_batch: int = 16,
    progress: bool = True,
    accelerator: Any = None,
) -> dict:
    """Samples `n` responses per prompt with `model`, scores them with `scorer`, and appends the best
    `keep` per prompt to the JSONL file `out` (streamed; an existing file is resumed, done prompts skipped).

    `scorer`: a `RewardModel`, a `PerplexityScorer` (lower is better) or any callable
    `(prompts, responses) -> scores` (higher is better, or set `higher_is_better = False` on it).
    Candidates with a NaN score are never kept. Returns counts: prompts done before, prompts written,
    records written, prompts with no scorable candidate (not written; retried on resume).
    With an `accelerator` of several processes, each samples and scores its share of the chunks and the
    main process writes them in order: the same file as one process, with the same resume rule.
    """
    if not 1 <= keep <= n:
        raise ValueError(f"keep must be in [1, n={n}], got {keep}")
    if prompts_per_batch < 1:
        raise ValueError(f"prompts_per_batch must be >= 1, got {prompts_per_batch}")
    tok = as_tokenizer(tokenizer)
    prompts = [prompts[i] for i in range(len(prompts))]  # a list or any map-style Dataset of strings
    not_str = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
    if not_str:
        raise TypeError(f"prompt {not_str[0]} is a {type(prompts[not_str[0]]).__name__}, not a str")
    encoded = [torch.tensor(encode_prompt(tok, p), dtype=torch.long) for p in prompts]
    empty = [i for i, e in enumerate(encoded) if e.numel() == 0]
    if empty:
        raise ValueError(f"prompt {empty[0]} is empty: the sampler needs at least one prompt token")
    score_fn = scoring_fn(scorer, name="scorer")
    config, path, shard = generation_config or GenerationConfig(), Path(out), Shard.of(accelerator)
    if config.max_new_tokens is None:
        raise ValueError("generation_config.max_new_tokens must be set")
    # The main process owns the file: it trims a half-written prompt, the others learn what is done.
    done = set(shard.from_main(sorted(_completed_prompts(path, prompts)) if shard.rank == 0 else None))
    stats = dict(prompts_done_before=len(done), prompts_written=0, records_written=0, prompts_without_score=0)
    starts = range(0, len(prompts), prompts_per_batch)
    todo = [range(s, min(s + prompts_per_batch, len(prompts))) for s in starts]
    todo = [chunk for chunk in todo if not all(i in done for i in chunk)]
    bar = tqdm(total=len(prompts), initial=len(done), desc="best-of-n data", disable=not progress or shard.rank > 0)
    make = partial(_make_chunk, model, tok, encoded, prompts, score_fn, n, config, seed)
    with JsonlAppender(path) if shard.rank == 0 else nullcontext() as appender:
        # Rounds of one chunk per process, gathered and written in chunk order: the file one process writes.
        for first in range(0, len(todo), shard.world):
            round_ = todo[first : first + shard.world]
            mine = make(round_[shard.rank], prompts_per_batch) if shard.rank < len(round_) else None
            for chunk, (responses, scores, order) in zip(round_, shard.gather(mine)[: len(round_)], strict=True):
                for row, i in enumerate(chunk):
                    if i not in done:
                        _write_prompt(appender, stats, i, prompts[i], responses[row], scores[row], order[row], keep)
                        bar.update(1)
    bar.close()
    return stats


def _make_chunk(model, tok, encoded, prompts, score_fn: Scorer, n, config, seed, chunk, prompts_per_batch):
    """Candidates and scores of one chunk of prompts; its randomness comes from its index alone.

    The whole chunk is resampled even if partly done, so the records written now equal those an
    uninterrupted run writes.
    """
    generator = torch.Generator().manual_seed(derive_seed(seed, "synthetic-chunk", chunk.start // prompts_per_batch))
    responses = sample_responses(
        model, tok, [encoded[i] for i in chunk], num_samples=n, config=config, generator=generator
    )
    scores, order = _score_chunk(score_fn, [prompts[i] for i in chunk], responses)
    return responses, scores, order


def _score_chunk(score_fn: Scorer, prompts, responses) -> tuple[list[list[float]], list[list[int]]]:
    """Scores (q, k) of one chunk's candidates in one scorer call, and each row's order best first."""
    k = len(responses[0])
    flat_p = [p for p in prompts for _ in range(k)]
    scores = rearrange(score_fn(flat_p, [r for rs in responses for r in rs]), "(q k) -> q k", k=k)
    order, _ = rank_candidates(scores, k, score_fn.higher_is_better)
    return scores.tolist(), order.tolist()


def _write_prompt(appender, stats, index, prompt, responses, scores, order, keep):
    valid = [j for j in order if not math.isnan(scores[j])]
    kept = valid[:keep]
    if not kept:
        stats["prompts_without_score"] += 1
        return
    discarded = [_finite_or_none(scores[j]) for j in order if j not in kept]
    for rank, j in enumerate(kept):
        if appender is None:  # not the main process: it counts, the main process writes
            continue
        appender.write(
            {
                "prompt": prompt,
                "response": responses[j],
                "score": _finite_or_none(scores[j]),
                "rank": rank,
                "prompt_index": index,
                "num_kept": len(kept),
                "discarded_scores": discarded,
            }
        )
    stats["prompts_written"] += 1
    stats["records_written"] += len(kept)
