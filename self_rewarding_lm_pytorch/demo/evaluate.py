"""Measure a model on the demo task's held-out prompts: as a solver and as a judge.

Metrics (all on held-out prompts never trained on):
- `accuracy`: greedy decoding, exact answer.
- `best_of_4_accuracy`: 4 samples (temperature 0.7, top-p 0.9), ranked by the model's own judge
  (mean of `num_judgments` judgments at `judge_temperature`, as the self-reward stages judge;
  unparsed -> ranked last); the top one is checked.
- `oracle_best_of_4`: the share of prompts where at least one of those 4 samples is right (the
  ceiling any judge could reach on those samples).
- `judge_pairwise_accuracy`: for each prompt, the correct answer vs a deliberately wrong one
  (the same kind of mistakes as in the seed data), both judged; 1 if the correct one scores
  higher, 0.5 on a tie (unparsed counts as the lowest score). 0.5 is chance.
- `judge_sample_pairwise_accuracy`: the same over (correct, wrong) pairs among the model's own
  4 samples, NaN when no prompt had both.
- `judge_parse_failure_rate`: the share of all judgments above that did not parse.
- `mean_response_length`: characters of the greedy answers.
"""

from __future__ import annotations

import math
import random

import torch
from beartype import beartype
from einops import rearrange
from torch import Tensor, nn

from self_rewarding_lm_pytorch.demo.task import AdditionTask, is_correct

__all__ = ["best_of_k", "evaluate_model", "pairwise_accuracy"]

# Shape legend: p prompts, k candidates per prompt.


def _rank_value(score: float) -> float:
    return -math.inf if math.isnan(score) else score


def pairwise_accuracy(score_good: list[float], score_bad: list[float]) -> float:
    """Mean over pairs of 1 (good > bad), 0.5 (tie), 0 (good < bad); NaN scores rank lowest."""
    if not score_good:
        return math.nan
    total = 0.0
    for g, b in zip(score_good, score_bad, strict=True):
        g, b = _rank_value(g), _rank_value(b)
        total += 1.0 if g > b else 0.5 if g == b else 0.0
    return total / len(score_good)


def best_of_k(scores: Tensor) -> Tensor:
    """(p, k) scores -> (p,) index of the best candidate; NaN ranks last, ties go to the first."""
    filled = torch.where(torch.isnan(scores), torch.full_like(scores, -math.inf), scores)
    return filled.argmax(dim=-1)


def _sample_texts(model, tokenizer, prompts, *, num_samples, temperature, max_new_tokens, generator):
    from self_rewarding_lm_pytorch.core.sampling import sample

    out = sample(
        model,
        [torch.tensor(tokenizer.encode(p), dtype=torch.long) for p in prompts],
        max_new_tokens=max_new_tokens,
        num_samples=num_samples,
        temperature=temperature,
        top_p=0.9 if temperature > 0 else None,
        eos_id=tokenizer.eos_id,
        pad_id=tokenizer.pad_id,
        generator=generator,
    )
    return out.texts(tokenizer)


def _mixed_pairs(correct: Tensor, scores: Tensor) -> tuple[list[float], list[float]]:
    """Scores of every (correct, wrong) pair of candidates of the same prompt: (p, k), (p, k)."""
    good, bad = [], []
    for row_ok, row_scores in zip(correct.tolist(), scores.tolist(), strict=True):
        for a, a_ok in enumerate(row_ok):
            for b, b_ok in enumerate(row_ok):
                if a_ok and not b_ok:
                    good.append(row_scores[a])
                    bad.append(row_scores[b])
    return good, bad


@beartype
@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    tokenizer,
    reward_config,
    prompts: list[str],
    *,
    num_candidates: int = 4,
    num_judgments: int = 3,
    max_new_tokens: int = 8,
    judge_max_new_tokens: int = 20,
    judge_temperature: float = 0.7,
    seed: int = 0,
) -> dict:
    """The metrics in the module docstring, as plain floats."""
    from self_rewarding_lm_pytorch.self_reward.judge import judge_scores

    generator = torch.Generator().manual_seed(seed)
    task, rng = AdditionTask(), random.Random(seed)
    greedy = _sample_texts(
        model, tokenizer, prompts, num_samples=1, temperature=0.0, max_new_tokens=max_new_tokens, generator=generator
    )
    samples = _sample_texts(
        model,
        tokenizer,
        prompts,
        num_samples=num_candidates,
        temperature=0.7,
        max_new_tokens=max_new_tokens,
        generator=generator,
    )
    sample_prompts = [p for p in prompts for _ in range(num_candidates)]  # prompt-major, as sampled
    wrong = [task.wrong_answer(p, rng) for p in prompts]
    right = [task.answer(p) for p in prompts]

    judged_prompts = sample_prompts + prompts + prompts
    judged_responses = samples + right + wrong
    result = judge_scores(
        model,
        tokenizer,
        reward_config,
        judged_prompts,
        judged_responses,
        num_judgments=num_judgments,
        max_new_tokens=judge_max_new_tokens,
        temperature=judge_temperature,
        top_p=0.9 if judge_temperature > 0 else None,
        generator=generator,
    )
    n_samples, n = len(samples), len(prompts)
    sample_scores = rearrange(result.scores[:n_samples], "(p k) -> p k", k=num_candidates)
    right_scores = result.scores[n_samples : n_samples + n].tolist()
    wrong_scores = result.scores[n_samples + n :].tolist()

    correct = torch.tensor([is_correct(p, r) for p, r in zip(sample_prompts, samples, strict=True)])
    correct = rearrange(correct, "(p k) -> p k", k=num_candidates)
    best = best_of_k(sample_scores)
    best_correct = correct.gather(1, best[:, None])[:, 0]

    good, bad = _mixed_pairs(correct, sample_scores)
    num_judgments_made = max(result.num_judgments, 1)
    return {
        "accuracy": sum(is_correct(p, r) for p, r in zip(prompts, greedy, strict=True)) / n,
        "best_of_4_accuracy": float(best_correct.float().mean()),
        "oracle_best_of_4": float(correct.any(dim=-1).float().mean()),
        "sample_accuracy": float(correct.float().mean()),
        "judge_pairwise_accuracy": pairwise_accuracy(right_scores, wrong_scores),
        "judge_sample_pairwise_accuracy": pairwise_accuracy(good, bad),
        "judge_sample_pairs": len(good),
        "judge_parse_failure_rate": result.num_failed / num_judgments_made,
        "mean_response_length": sum(len(r) for r in greedy) / n,
        "num_heldout": n,
        "examples": [
            {"prompt": p, "greedy": g, "correct": is_correct(p, g)}
            for p, g in list(zip(prompts, greedy, strict=True))[:5]
        ],
    }
