"""Reward sources, and the one adapter that turns any of them into a scoring function.

A *reward source* is what a stage scores responses with. It comes in three forms:

- a callable `(prompts: list[str], responses: list[str]) -> scores` (a list, tuple or tensor of
  floats, NaN where it cannot score);
- a reward model: anything with `as_reward_fn()` (`RewardModel`), scored through ITS OWN tokenizer,
  because the ids it was trained on need not be the policy's;
- the self-judge (`SELF_JUDGE`, the string "self_judge"): the policy judges its own responses with
  the run's `RewardConfig`; only the stage that owns the policy can build that function, so it
  passes it in as `self_judge`.

`scoring_fn(source)` turns any of them into a `Scorer`: `scorer(prompts, responses) -> Tensor (b,)`
float32 on the CPU, length-checked, with `higher_is_better` read from the source (a
`PerplexityScorer` says False). Every stage, best-of-N, synthetic data and PPO score through it,
so no caller can pick the wrong tokenizer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["SELF_JUDGE", "Scorer", "check_reward_source", "is_reward_model", "scoring_fn"]

SELF_JUDGE = "self_judge"


def is_reward_model(source: Any) -> bool:
    """Whether `source` is a reward model (scores through its own tokenizer via `as_reward_fn()`)."""
    return callable(getattr(source, "as_reward_fn", None))


def check_reward_source(source: Any, *, name: str = "reward", allow_self_judge: bool = False) -> None:
    """Raise TypeError naming `name` unless `source` is a reward source (called at construction)."""
    if allow_self_judge and isinstance(source, str) and source == SELF_JUDGE:
        return
    if is_reward_model(source) or (callable(source) and not isinstance(source, (str, type))):
        return
    forms = "a callable (prompts, responses) -> scores or a RewardModel"
    if allow_self_judge:
        forms = f"{SELF_JUDGE!r}, " + forms
    raise TypeError(f"{name} must be {forms}, got {type(source).__name__} {source!r:.80}")


@dataclass(frozen=True)
class Scorer:
    """`(prompts, responses) -> Tensor (b,)` float32 on the CPU, NaN where unscored."""

    fn: Callable[[list[str], list[str]], Any]
    higher_is_better: bool = True
    name: str = "reward"

    def __call__(self, prompts: list[str], responses: list[str]) -> Tensor:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        raw = self.fn(list(prompts), list(responses))
        if not isinstance(raw, Tensor):
            raw = torch.as_tensor(raw if isinstance(raw, (list, tuple)) else list(raw), dtype=torch.float32)
        # (b, 1) is accepted: a sequence-classification head's logits have that shape
        scores = raw.detach().to(device="cpu", dtype=torch.float32).reshape(-1)
        if scores.numel() != len(responses):
            raise ValueError(f"{self.name} returned {scores.numel()} scores for {len(responses)} responses")
        return scores


def scoring_fn(
    source: Any, *, name: str = "reward", self_judge: Callable[[list[str], list[str]], Any] | None = None
) -> Scorer:
    """The `Scorer` of any reward source (see the module docstring).

    A reward model scores through its own tokenizer: `as_reward_fn()` is called without one.
    `self_judge` is the function that `SELF_JUDGE` stands for; without it, `SELF_JUDGE` is an error.
    """
    if isinstance(source, Scorer):
        return source
    check_reward_source(source, name=name, allow_self_judge=self_judge is not None)
    if isinstance(source, str):
        assert self_judge is not None  # check_reward_source admits the string only with a self-judge
        return Scorer(self_judge, True, f"{name} (self-judge)")
    higher_is_better = bool(getattr(source, "higher_is_better", True))
    if is_reward_model(source):
        return Scorer(source.as_reward_fn(), higher_is_better, name)
    return Scorer(source, higher_is_better, name)
