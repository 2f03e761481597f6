"""Self-consistency as a self-reward (Prasad et al. 2024, "Self-Consistency Preference Optimization").

A candidate's score is the share of the samples for its prompt whose extracted answer agrees with
its own: the answer most samples reach scores highest, a lone answer lowest. No judge and no ground
truth: only the model's own samples and a way to read an answer out of a response.

    reward = SelfConsistencyReward(r"=\\s*(-?\\d+)")     # the first group is the answer
    ExternalRewardDPOConfig(reward, prompts, 1000, num_candidate_responses=8)

It is a plain `(prompts, responses) -> scores` callable, so it goes wherever a reward function does.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from beartype import beartype

__all__ = ["AnswerExtractor", "SelfConsistencyReward", "consistency_scores", "make_answer_extractor"]

AnswerExtractor = Callable[[str], "str | None"]


def make_answer_extractor(extract: str | re.Pattern | Callable | None) -> Callable[[str], str | None]:
    """`response -> answer or None` from a regex (its first group if it has one, else the whole
    match; the first match counts), a callable, or None (the whole response). Answers are stripped of
    surrounding whitespace; an empty answer is no answer."""
    if extract is None:
        return _clean
    if isinstance(extract, (str, re.Pattern)):
        pattern = re.compile(extract) if isinstance(extract, str) else extract  # a bad regex fails here

        def by_regex(response: str) -> str | None:
            match = pattern.search(response)
            if match is None:
                return None
            return _clean(match.group(1) if pattern.groups else match.group(0))

        return by_regex
    if callable(extract):

        def by_callable(response: str) -> str | None:
            answer = extract(response)
            if answer is not None and not isinstance(answer, str):
                raise TypeError(f"the answer extractor must return a str or None, got {type(answer).__name__}")
            return None if answer is None else _clean(answer)

        return by_callable
    raise TypeError(f"extract must be a regex, a callable or None, got {type(extract).__name__}")


def _clean(answer: str | None) -> str | None:
    if answer is None:
        return None
    answer = answer.strip()
    return answer or None


@beartype
def consistency_scores(prompts: Sequence[str], answers: Sequence[str | None]) -> list[float]:
    """Per row: the share of its prompt's rows (all of them, answered or not) with the same answer;
    NaN where the row has no answer (it can be neither chosen nor rejected on this evidence)."""
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    rows_of = defaultdict(list)
    for i, prompt in enumerate(prompts):
        rows_of[prompt].append(i)
    scores = [math.nan] * len(prompts)
    for rows in rows_of.values():
        votes = Counter(answers[i] for i in rows if answers[i] is not None)
        for i in rows:
            if answers[i] is not None:
                scores[i] = votes[answers[i]] / len(rows)
    return scores


@dataclass(frozen=True)
class SelfConsistencyReward:
    """`(prompts, responses) -> scores`: each response's agreement with the other samples of its prompt.

    Responses are grouped by prompt text within one call (the preference stages pass all N candidates
    of a prompt together), and the share counts every sample of the prompt, so with N = 8 a majority
    of 5 scores 0.625 and a lone answer 0.125. A response with no extractable answer scores NaN.
    `extract`: a regex (its first group, or the whole match), a callable `str -> str | None`, or
    None to compare whole responses.
    """

    extract: str | re.Pattern | Callable | None = None
    _extractor: Callable = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "_extractor", make_answer_extractor(self.extract))

    def answers(self, responses: Sequence[str]) -> list[str | None]:
        return [self._extractor(r) for r in responses]

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        return consistency_scores(list(prompts), self.answers(responses))
