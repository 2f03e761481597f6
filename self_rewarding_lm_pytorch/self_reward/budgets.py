"""Token budgets for preference generation: how long a prompt, a candidate and a judgment may be so
that prompt + candidate fits the policy's context and judge template + prompt + candidate + judgment
fits the judge's. Derived from the models' `max_seq_len` when not given; raised early when they cannot fit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from beartype import beartype

__all__ = ["BudgetError", "Budgets", "resolve_budgets"]

# With only the model's context to go by, a prompt may take at most this share of what the judge
# template leaves, so one long prompt cannot squeeze the candidate and judge budgets to nothing.
_MAX_PROMPT_SHARE = 1 / 3


class BudgetError(ValueError):
    """Length budgets that cannot fit the model's context (raised before any generation)."""


@dataclass(frozen=True)
class Budgets:
    """Token budgets: prompts longer than `max_prompt_len` are skipped; candidates get
    `max_new_tokens`, judgments `judge_max_new_tokens` (generated tokens only)."""

    max_prompt_len: int
    max_new_tokens: int
    judge_max_new_tokens: int


@beartype
def resolve_budgets(
    prompt_lens: Sequence[int],
    *,
    template_len: int,
    policy_max_len: int | None,
    judge_max_len: int | None,
    max_new_tokens: int | None = None,
    judge_max_new_tokens: int | None = None,
    judged: bool = True,
) -> Budgets:
    """Budgets such that prompt + candidate fits the policy's context and judge template + prompt +
    candidate + judgment fits the judge's. A missing budget is derived from the contexts: the prompt
    allowance is the longest prompt (at most a third of the room), the judge gets half of what is
    left and the candidate the rest. `judged=False` (an external reward) reserves no judge room.
    """
    big = 10**9  # "no limit" when a model has no max_seq_len
    policy_max = policy_max_len or big
    judge_max = (judge_max_len or big) if judged else big
    template = template_len if judged else 0
    judge_new = judge_max_new_tokens if judged else 0
    for name, value in (("max_new_tokens", max_new_tokens), ("judge_max_new_tokens", judge_new)):
        if value is not None and value < (1 if judged or name == "max_new_tokens" else 0):
            raise BudgetError(f"{name} must be >= 1, got {value}")
    if max_new_tokens is None or judge_new is None:
        if policy_max_len is None and (not judged or judge_max_len is None):
            raise BudgetError("the model has no max_seq_len: give max_new_tokens and judge_max_new_tokens explicitly")
        room = min(judge_max - template, policy_max)
        prompt_cap = max(1, min(max(prompt_lens, default=1), int(room * _MAX_PROMPT_SHARE)))
        judge_left, policy_left = judge_max - template - prompt_cap, policy_max - prompt_cap
        if judge_new is None:
            judge_new = judge_left // 2 if max_new_tokens is None else judge_left - max_new_tokens
        if max_new_tokens is None:
            max_new_tokens = min(judge_left - judge_new, policy_left)
    judge_need = template + 1 + max_new_tokens + judge_new
    if max_new_tokens < 1 or (judged and judge_new < 1) or judge_need > judge_max or 1 + max_new_tokens > policy_max:
        raise BudgetError(
            f"length budgets cannot fit: judge template {template_len} + prompt (>= 1) + candidate {max_new_tokens} + "
            f"judgment {judge_new} = {judge_need} tokens for a judge max_seq_len of {judge_max_len}; prompt (>= 1) + "
            f"candidate = {1 + max_new_tokens} for a policy max_seq_len of {policy_max_len}"
        )
    max_prompt = min(policy_max - max_new_tokens, judge_max - template - max_new_tokens - judge_new)
    return Budgets(
        max_prompt_len=int(max_prompt), max_new_tokens=int(max_new_tokens), judge_max_new_tokens=int(judge_new)
    )
