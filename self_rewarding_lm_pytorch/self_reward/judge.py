"""LLM-as-a-judge, run: batched judging of (prompt, response) pairs by a model through a `RewardConfig`.

Shapes: b (prompt, response) pairs judged, j judgments per pair.

The judge itself is data (`self_reward.reward_config`: the template, how to read the score, the
default rubric); its names stay importable from here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from beartype import beartype
from torch import Tensor

from self_rewarding_lm_pytorch.core.sampling_config import (
    JudgeSettings,
    SamplingConflictError,
    resolve_sampling,
)
from self_rewarding_lm_pytorch.self_reward.reward_config import (
    DEFAULT_JUDGE_PROMPT,
    DEFAULT_REWARD_CONFIG,
    RewardConfig,
    RewardTemplateError,
)

__all__ = [
    "DEFAULT_JUDGE_PROMPT",
    "DEFAULT_REWARD_CONFIG",
    "JudgeResult",
    "RewardConfig",
    "RewardTemplateError",
    "judge_scores",
    "resolve_judge_settings",
]


@dataclass
class JudgeResult:
    """Judgments of b (prompt, response) pairs: `scores` (b,) is the mean of the parsed judgments
    (NaN when none parsed); `texts[i]` and `parsed[i]` hold every judgment of pair i."""

    scores: Tensor
    texts: list[list[str]]
    parsed: list[list[float | None]]
    num_failed: int  # judgments that did not parse
    num_skipped: int = 0  # pairs not judged because the judge prompt did not fit the model

    @property
    def num_judgments(self) -> int:
        return sum(len(t) for t in self.texts)


@beartype
def judge_scores(
    model,
    tokenizer,
    reward_config: RewardConfig,
    prompts: list[str],
    responses: list[str],
    *,
    num_judgments: int = 3,
    max_new_tokens: int | None = None,
    temperature: float | int = 0.7,
    top_p: float | int | None = 0.9,
    settings: JudgeSettings | None = None,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    use_cache: bool = True,
    first_pair: int = 0,
) -> JudgeResult:
    """Judge each (prompt, response) `num_judgments` times with `model` sampling from the rendered
    judge prompt; scores are averaged over the judgments that parse.

    The judge's settings come as one `JudgeSettings` (`settings=`, its `sampling.max_new_tokens`
    required) or as the loose keywords; a loose keyword that disagrees with `settings` is a
    `SamplingConflictError`. A judge prompt longer than `model.max_seq_len - max_new_tokens` is not
    judged (NaN, counted in `num_skipped`); callers that budget lengths up front
    (`generate_preferences`) never hit this.

    `first_pair`: the index of the first pair when this call is one process's share of a larger one
    (with the same generator seed); its judgments then draw the random numbers they would draw in the
    whole call. A pair skipped for length keeps its place, so the pairs after it draw the same either way.

    A greedy judge (temperature 0) runs once per distinct judge prompt; repeats get copies of its judgment.
    """
    from self_rewarding_lm_pytorch.core.sampling import sample
    from self_rewarding_lm_pytorch.core.tokenizer import encode_prompt

    if len(prompts) != len(responses):
        raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
    settings = resolve_judge_settings(
        settings,
        num_judgments=num_judgments,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        where="judge_scores",
    )
    num_judgments, sampling = settings.num_judgments, settings.sampling
    if sampling.max_new_tokens is None:
        raise ValueError("judge_scores needs max_new_tokens (as a keyword or in settings.sampling)")
    max_new_tokens = sampling.max_new_tokens
    limit = getattr(model, "max_seq_len", None)
    # The rendered judge prompt is a user message when the tokenizer has a chat template.
    encoded = [
        encode_prompt(tokenizer, reward_config.render(prompt=p, response=r))
        for p, r in zip(prompts, responses, strict=True)
    ]
    fits = [len(ids) >= 1 and (limit is None or len(ids) + max_new_tokens <= limit) for ids in encoded]
    judged = [i for i, ok in enumerate(fits) if ok]
    texts: list[list[str]] = [[] for _ in prompts]
    source = _judgment_sources(encoded, judged, is_greedy=sampling.temperature == 0)
    sampled = sorted(set(source.values()))
    per_pair = 1 if sampling.temperature == 0 else num_judgments  # greedy judgments would all be equal
    if sampled:
        out = sample(  # the sampler moves prompts to the model's device
            model,
            [torch.tensor(encoded[i], dtype=torch.long) for i in sampled],
            sampling=sampling,
            num_samples=per_pair,
            eos_id=tokenizer.eos_id,
            pad_id=tokenizer.pad_id,
            generator=generator,
            batch_size=batch_size,
            use_cache=use_cache,
            first_row=first_pair * per_pair,
            prompt_positions=sampled,  # a skipped pair leaves a gap: the others keep their draws
        )
        decoded = out.texts(tokenizer)
        # prompt-major rows: judgment j of the r-th sampled pair is row r * per_pair + j
        judged_by = {i: decoded[row * per_pair : (row + 1) * per_pair] for row, i in enumerate(sampled)}
        for i in judged:
            texts[i] = judged_by[source[i]] * (num_judgments // per_pair)
    parsed = [[reward_config.parse(t, response=r) for t in ts] for ts, r in zip(texts, responses, strict=True)]
    scores = torch.tensor([_mean_or_nan(ps) for ps in parsed], dtype=torch.float32)
    num_failed = sum(p is None for ps in parsed for p in ps)
    return JudgeResult(
        scores=scores, texts=texts, parsed=parsed, num_failed=num_failed, num_skipped=len(prompts) - len(judged)
    )


def _judgment_sources(encoded: list[list[int]], judged: list[int], *, is_greedy: bool) -> dict[int, int]:
    """For each judged pair, the pair whose judgments it gets: itself, or for a greedy judge (which says
    the same about the same judge prompt every time) the first pair with the same judge prompt. A model's
    samples repeat answers: a quarter to a third of the demo's are distinct."""
    if not is_greedy:
        return {i: i for i in judged}
    first_of: dict[tuple[int, ...], int] = {}
    return {i: first_of.setdefault(tuple(encoded[i]), i) for i in judged}


def resolve_judge_settings(
    settings: JudgeSettings | None,
    *,
    num_judgments: int,
    max_new_tokens: int | None,
    temperature: float | int,
    top_p: float | int | None,
    where: str,
) -> JudgeSettings:
    """`JudgeSettings` from `settings=` or the loose judge keywords (defaults 3, None, 0.7, 0.9), one rule."""
    loose = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
    sampling = resolve_sampling(
        None if settings is None else settings.sampling,
        {k: (k, v) for k, v in loose.items()},
        _JUDGE_DEFAULTS,
        where=where,
    )
    if settings is not None and num_judgments not in (3, settings.num_judgments):
        raise SamplingConflictError(
            f"{where}: num_judgments={num_judgments} disagrees with settings.num_judgments={settings.num_judgments}"
        )
    return JudgeSettings(sampling, settings.num_judgments if settings is not None else num_judgments)


_JUDGE_DEFAULTS = dict(max_new_tokens=None, temperature=0.7, top_p=0.9)


def _mean_or_nan(values: list[float | None]) -> float:
    valid = [v for v in values if v is not None]
    return sum(valid) / len(valid) if valid else math.nan
