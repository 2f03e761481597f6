"""Preference generation for one stage: sample N candidates per prompt, score them (self-judged or by a
reward function), pick pairs with a pair policy, and write everything to the stage's folder.

Shapes: p prompts in a chunk, k candidates per prompt, b = p * k rows.

Files in `out_dir`: `candidates.jsonl` (one line per prompt: the prompt, every candidate with its
judge texts, parsed scores and mean score, the pair if one was made, or why the prompt was dropped),
streamed chunk by chunk so a crash loses at most one chunk, and `pairs.jsonl` (prompt, chosen,
rejected, scores) written at the end.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from collections import Counter
from collections.abc import Callable, Sized
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, cast

import torch
from beartype import beartype
from einops import rearrange
from torch import Tensor, nn

from self_rewarding_lm_pytorch.core.batching import SizedDataset
from self_rewarding_lm_pytorch.core.files import atomic_write_json, write_jsonl
from self_rewarding_lm_pytorch.core.modules import unwrap_network
from self_rewarding_lm_pytorch.core.reward_source import scoring_fn
from self_rewarding_lm_pytorch.core.sampling_config import JudgeSettings, SamplingConfig, resolve_sampling
from self_rewarding_lm_pytorch.core.seeding import derive_seed
from self_rewarding_lm_pytorch.core.tokenizer import encode_prompt
from self_rewarding_lm_pytorch.self_reward.budgets import BudgetError, Budgets, resolve_budgets
from self_rewarding_lm_pytorch.self_reward.chunks import Shard, resume_chunks, run_chunks
from self_rewarding_lm_pytorch.self_reward.judge import judge_scores, resolve_judge_settings
from self_rewarding_lm_pytorch.self_reward.pairs import best_vs_worst
from self_rewarding_lm_pytorch.self_reward.preference_records import (
    candidate_records,
    pair_record,
    preference_stats,
    report_preferences,
    select_pairs,
)
from self_rewarding_lm_pytorch.self_reward.reward_config import DEFAULT_REWARD_CONFIG, RewardConfig

__all__ = ["BudgetError", "Budgets", "PreferenceResult", "generate_preferences", "resolve_budgets"]

logger = logging.getLogger(__name__)


@dataclass
class PreferenceResult:
    """`records`: the pairs `{"prompt", "chosen", "rejected", "chosen_score", "rejected_score", ...}`;
    `stats`: counts and means for the stage log (see `generate_preferences`)."""

    records: list[dict]
    stats: dict[str, Any] = field(default_factory=dict)


def _prompt_text(item, tokenizer) -> str:
    """Prompt datasets hold strings (the seed README), dicts with "prompt", or token ids."""
    if isinstance(item, dict):
        item = item.get("prompt")
    if isinstance(item, str):
        return item
    if isinstance(item, (list, tuple, Tensor)):
        return tokenizer.decode(item)
    raise TypeError(f"a prompt must be a str, a dict with 'prompt', or token ids; got {type(item).__name__}")


def _fit_text(text: str, tokenizer, max_tokens: int) -> tuple[str, bool]:
    """The candidate text cut so its re-encoding has at most `max_tokens` tokens. Decoding invalid
    bytes gives replacement characters that re-encode longer, which would break the judge budget."""
    if len(tokenizer.encode(text)) <= max_tokens:
        return text, False
    lo, hi = 0, len(text)  # longest prefix that fits, by bisection on characters
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if len(tokenizer.encode(text[:mid])) <= max_tokens else (lo, mid - 1)
    return text[:lo], True


def _encode_prompts(prompts, tokenizer) -> list[tuple[str | None, list[int] | None, str | None]]:
    """(text, ids, drop reason) per prompt; a prompt that cannot be read is dropped, not fatal."""
    out: list[tuple[str | None, list[int] | None, str | None]] = []
    for item in prompts:
        try:
            text = _prompt_text(item, tokenizer)
            out.append((text, encode_prompt(tokenizer, text), None))  # chat-rendered when there is a template
        except (TypeError, ValueError) as e:
            logger.warning("dropping an unreadable prompt: %s", e)
            out.append((None, None, "invalid"))
    return out


def _max_seq_len(model) -> int | None:
    """The context length of a TransformerWrapper, or of one inside a DDP or AutoregressiveWrapper."""
    value = getattr(unwrap_network(model), "max_seq_len", None)
    return value if isinstance(value, int) else None


def _chunk_generator(generator, seed, pass_idx: int, chunk_idx: int) -> torch.Generator | None:
    """One generator per (pass, chunk) from `seed`, so a resumed run draws exactly what an
    uninterrupted one would; else the caller's generator (or torch's global RNG when None)."""
    if seed is None:
        return generator
    g = torch.Generator()  # the sampler draws its base key on the CPU
    g.manual_seed(derive_seed(seed, "preference-chunk", pass_idx, chunk_idx))
    return g


@dataclass(frozen=True)
class _ChunkContext:
    """What every chunk of one `generate_preferences` call shares: models, settings, resolved budgets."""

    model: nn.Module
    tokenizer: Any
    reward_config: RewardConfig
    reward_fn: Callable | None  # a Scorer (core.reward_source); None: the model judges itself
    judge_model: nn.Module
    num_candidates: int
    sampling: SamplingConfig  # max_new_tokens filled in from the budgets
    judge: JudgeSettings
    budgets: Budgets
    pair_policy: Callable
    batch_size: int | None
    use_cache: bool
    allow_unfinished_chosen: bool


def _score(
    ctx: _ChunkContext, prompts_rep: list[str], responses: list[str], generator
) -> tuple[Tensor, list, list, dict]:
    """(b,) scores and the judge texts/parsed scores per row (empty lists for a reward function)."""
    b = len(responses)
    if ctx.reward_fn is not None:
        scores = ctx.reward_fn(prompts_rep, responses)  # a Scorer: (b,) float32 on the CPU, length-checked
        scores = torch.where(torch.isfinite(scores), scores, torch.full_like(scores, math.nan))
        return scores, [[] for _ in range(b)], [[] for _ in range(b)], {}
    judged = judge_scores(
        ctx.judge_model,
        ctx.tokenizer,
        ctx.reward_config,
        prompts_rep,
        responses,
        settings=ctx.judge,
        generator=generator,
        batch_size=ctx.batch_size,
        use_cache=ctx.use_cache,
    )
    counts = {
        "judgments": judged.num_judgments,
        "parse_failures": judged.num_failed,
        "judge_skipped": judged.num_skipped,
    }
    return judged.scores, judged.texts, judged.parsed, counts


def _score_nonempty(ctx: _ChunkContext, prompts_rep: list[str], responses: list[str], generator, counts: Counter):
    """Scores (b,) with NaN for empty candidates: one that is EOS at once cannot be trained on as
    chosen or rejected, so it is not judged."""
    keep = [i for i, r in enumerate(responses) if r]
    counts["candidates_empty"] += len(responses) - len(keep)
    scores = torch.full((len(responses),), math.nan)
    texts: list[list[str]] = [[] for _ in responses]
    parsed: list[list[float | None]] = [[] for _ in responses]
    if keep:
        kept = _score(ctx, [prompts_rep[i] for i in keep], [responses[i] for i in keep], generator)
        counts.update(kept[3])
        scores[keep] = kept[0]
        for j, i in enumerate(keep):
            texts[i], parsed[i] = kept[1][j], kept[2][j]
    return scores, texts, parsed


def _sample_candidates(ctx: _ChunkContext, items: list, generator, counts: Counter) -> tuple[list[str], list[bool]]:
    """The chunk's p * k candidate texts (prompt-major), cut to the candidate budget, and which finished."""
    from self_rewarding_lm_pytorch.core.sampling import sample

    tok = ctx.tokenizer
    out = sample(
        ctx.model,
        [torch.tensor(ids, dtype=torch.long) for _, _, ids in items],
        sampling=ctx.sampling,
        num_samples=ctx.num_candidates,
        eos_id=tok.eos_id,
        pad_id=tok.pad_id,
        generator=generator,
        use_cache=ctx.use_cache,
        batch_size=ctx.batch_size,
    )
    fitted = [_fit_text(t, tok, ctx.budgets.max_new_tokens) for t in out.texts(tok)]
    counts["candidates_truncated"] += sum(cut for _, cut in fitted)
    finished = _finished(out, tok.eos_id, [cut for _, cut in fitted])
    counts["candidates_unfinished"] += finished.count(False)
    return [t for t, _ in fitted], finished


def _process_chunk(
    ctx: _ChunkContext, items: list[tuple[int, str, list[int]]], generator, counts: Counter
) -> list[dict]:
    """Candidate records (one per prompt, with its pair or drop reason) for one chunk of prompts."""
    k, tok = ctx.num_candidates, ctx.tokenizer
    responses, finished = _sample_candidates(ctx, items, generator, counts)
    prompts_rep = [text for _, text, _ in items for _ in range(k)]
    scores, texts, parsed = _score_nonempty(ctx, prompts_rep, responses, generator, counts)
    counts["candidates"] += len(responses)
    lengths = torch.tensor([len(tok.encode(r)) for r in responses])
    scores, lengths = rearrange(scores, "(p k) -> p k", k=k), rearrange(lengths, "(p k) -> p k", k=k)
    # with a tokenizer without EOS nothing can finish, so the unfinished-chosen rule does not apply
    check_finished = tok.eos_id is not None and not ctx.allow_unfinished_chosen
    chosen = select_pairs(ctx.pair_policy, scores, lengths, responses, finished, check_finished=check_finished)
    return candidate_records(items, responses, scores, lengths, (texts, parsed), finished, chosen)


def _finished(out, eos_id: int | None, cut: list[bool]) -> list[bool]:
    """Per row: the candidate ended with EOS (not at max_new_tokens) and its text was not cut to fit."""
    ended = []
    for ids, mask, was_cut in zip(out.response_ids, out.response_mask, cut, strict=True):
        tokens = ids[mask]
        ended.append(eos_id is not None and len(tokens) > 0 and int(tokens[-1]) == eos_id and not was_cut)
    return ended


def _make_chunk(ctx: _ChunkContext, generator, seed, key: tuple[int, int], items: list) -> tuple[list[dict], Counter]:
    """One chunk's records and counts, its randomness drawn from its key (see `_chunk_generator`)."""
    counts: Counter[str] = Counter()
    return _process_chunk(ctx, items, _chunk_generator(generator, seed, *key), counts), counts


def _plan_chunks(encoded, budgets: Budgets, chunk_size: int, max_passes: int):
    """[((pass, chunk), [(index, text, ids)])] over the usable prompts, and the drop records of the rest."""
    usable, dropped = [], []
    for i, (text, ids, reason) in enumerate(encoded):
        reason = reason or ("empty" if not ids else "too_long" if len(ids) > budgets.max_prompt_len else None)
        if reason:
            dropped.append({"prompt_index": i, "prompt": text, "candidates": [], "pair": None, "dropped": reason})
        else:
            usable.append((i, text, ids))
    if dropped:
        reasons = dict(Counter(r["dropped"] for r in dropped))
        warnings.warn(
            f"skipping {len(dropped)} of {len(encoded)} prompts ({reasons}); prompts may have at most "
            f"{budgets.max_prompt_len} tokens with these budgets {budgets}",
            stacklevel=3,
        )
    starts = range(0, len(usable), chunk_size)
    plan = [((p, c // chunk_size), usable[c : c + chunk_size]) for p in range(max_passes) for c in starts]
    return plan, dropped


@beartype
def generate_preferences(
    model,
    tokenizer,
    prompts: SizedDataset,
    *,
    reward_config: RewardConfig = DEFAULT_REWARD_CONFIG,
    reward_fn: Callable | None = None,
    judge_model=None,
    num_candidates: int = 4,
    temperature: float | int = 0.7,
    top_p: float | int | None = 0.9,
    num_judgments: int = 3,
    judge_temperature: float | int = 0.7,
    judge_top_p: float | int | None = 0.9,
    max_new_tokens: int | None = None,
    judge_max_new_tokens: int | None = None,
    sampling: SamplingConfig | None = None,
    judge: JudgeSettings | None = None,
    num_pairs: int | None = None,
    pair_policy: Callable = best_vs_worst,
    out_dir: str | Path | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    max_passes: int = 1,
    chunk_size: int = 16,
    batch_size: int | None = None,
    use_cache: bool = True,
    resume: bool = False,
    progress: bool = True,
    accelerator=None,
    allow_unfinished_chosen: bool = False,
) -> PreferenceResult:
    """Self-rewarding preference pairs (Yuan et al. 2024): `num_candidates` samples per prompt from
    `model`, each judged `num_judgments` times by `judge_model` (default: `model` itself) with
    `reward_config`, or scored by the reward source `reward_fn` (a `(prompts, responses) -> scores`
    callable or a `RewardModel`, see `core.reward_source`); pairs by `pair_policy`.

    Stops when `num_pairs` pairs exist ("enough_pairs") or after `max_passes` passes over the prompts
    ("prompts_exhausted"). Budgets not given are derived from the models' `max_seq_len`; ones that
    cannot fit raise `BudgetError` before any generation. Too-long, empty and unreadable prompts are
    skipped and counted. With `seed`, each chunk draws from its own generator, so `resume=True` after
    a crash continues `out_dir/candidates.jsonl` exactly as an uninterrupted run would, and with an
    `accelerator` of several processes each process generates its share of the chunks (the result
    is the same as one process's).

    A candidate cut at `max_new_tokens` (no EOS) is recorded with `finished: false`; a pair whose
    chosen candidate is unfinished is dropped ("unfinished_chosen") unless `allow_unfinished_chosen`.
    Pairs record `chosen_finished`/`rejected_finished`, and DPO appends no EOS to an unfinished side.
    With a tokenizer without EOS nothing can finish, so the rule does not apply.
    """
    sampling = resolve_sampling(
        sampling,
        {k: (k, v) for k, v in dict(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens).items()},
        dict(temperature=0.7, top_p=0.9, max_new_tokens=None),
        where="generate_preferences",
    )
    judge = resolve_judge_settings(
        judge,
        num_judgments=num_judgments,
        max_new_tokens=judge_max_new_tokens,
        temperature=judge_temperature,
        top_p=judge_top_p,
        where="generate_preferences",
    )
    _check_counts(num_candidates, judge.num_judgments, max_passes, chunk_size, num_pairs)
    judge_model = judge_model if judge_model is not None else model
    if reward_fn is not None:  # a RewardModel scores through its own tokenizer (core.reward_source)
        reward_fn = scoring_fn(reward_fn, name="reward_fn")
    encoded = _encode_prompts([prompts[i] for i in range(len(cast(Sized, prompts)))], tokenizer)
    budgets = resolve_budgets(
        [len(ids) for _, ids, _ in encoded if ids],
        template_len=len(encode_prompt(tokenizer, reward_config.render(prompt="", response=""))),
        policy_max_len=_max_seq_len(model),
        judge_max_len=_max_seq_len(judge_model),
        max_new_tokens=sampling.max_new_tokens,
        judge_max_new_tokens=judge.sampling.max_new_tokens,
        judged=reward_fn is None,
    )
    plan, dropped = _plan_chunks(encoded, budgets, chunk_size, max_passes)
    ctx = _ChunkContext(
        model=model,
        tokenizer=tokenizer,
        reward_config=reward_config,
        reward_fn=reward_fn,
        judge_model=judge_model,
        num_candidates=num_candidates,
        # the budgets fill in the new-token counts the settings leave to the models' lengths
        sampling=dataclasses.replace(sampling, max_new_tokens=budgets.max_new_tokens),
        judge=JudgeSettings(
            dataclasses.replace(judge.sampling, max_new_tokens=budgets.judge_max_new_tokens or None),
            judge.num_judgments,
        ),
        budgets=budgets,
        pair_policy=pair_policy,
        batch_size=batch_size,
        use_cache=use_cache,
        allow_unfinished_chosen=allow_unfinished_chosen,
    )
    cand_path = Path(out_dir) / "candidates.jsonl" if out_dir is not None else None
    shard = Shard.of(accelerator) if seed is not None else Shard()
    done = shard.from_main(_finished_chunks(cand_path, plan, encoded) if resume and cand_path is not None else {})
    records, counts = run_chunks(
        plan,
        partial(_make_chunk, ctx, generator, seed),
        done=done,
        cand_path=cand_path,
        num_pairs=num_pairs,
        shard=shard,
        progress=progress,
    )
    pair_records = [pair_record(r) for r in records if r["pair"]][:num_pairs]
    stats = preference_stats(
        records + dropped,
        pair_records,
        counts,
        num_pairs_requested=num_pairs,
        stop_reason="enough_pairs" if num_pairs is not None and len(pair_records) >= num_pairs else "prompts_exhausted",
        num_prompts=len(encoded),
        budgets=dataclasses.asdict(budgets),
    )
    if out_dir is not None:
        write_jsonl(Path(out_dir) / "pairs.jsonl", pair_records)
        atomic_write_json(Path(out_dir) / "preference_stats.json", stats)
    report_preferences(stats)
    return PreferenceResult(records=pair_records, stats=stats)


def _check_counts(num_candidates: int, num_judgments: int, max_passes: int, chunk_size: int, num_pairs: int | None):
    if num_candidates < 2 or num_judgments < 1 or max_passes < 1 or chunk_size < 1:
        raise ValueError(
            f"need num_candidates >= 2, num_judgments, max_passes, chunk_size >= 1; got "
            f"{num_candidates}, {num_judgments}, {max_passes}, {chunk_size}"
        )
    if num_pairs is not None and num_pairs < 0:
        raise ValueError(f"num_pairs must be >= 0 or None, got {num_pairs}")


def _finished_chunks(cand_path: Path, plan: list, encoded: list) -> dict:
    """The chunks an earlier run finished (`core.files.resume_chunks`), checked against this run's prompts."""
    return resume_chunks(cand_path, {key: [i for i, _, _ in items] for key, items in plan}, [t for t, _, _ in encoded])
