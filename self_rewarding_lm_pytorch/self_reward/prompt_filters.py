"""Filters for self-generated prompts: length bounds, a parse check, near-duplicate removal by n-gram overlap.

The overlap of a candidate with another text is the share of the candidate's n-grams that also occur
in the other text, |A & B| / |A| (A, B the two n-gram sets): 1.0 means every n-gram of the candidate
is already there (an exact copy, or a copy inside a longer text), 0.0 none is. Texts with fewer than
n units are one n-gram of their own. A candidate is a near-duplicate when its largest overlap with
any seed prompt, any text to avoid, or any prompt kept before it reaches `max_overlap`.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

__all__ = ["DROP_REASONS", "NGramIndex", "PromptFilter", "ngram_overlap", "ngrams"]

# Why a generated prompt was dropped, in the order the checks run.
DROP_REASONS = (
    "unfinished",  # the model hit max_new_tokens before ending the prompt
    "too_short",
    "too_long",
    "failed_parse_check",
    "near_duplicate_of_seed",
    "near_duplicate_of_avoided",
    "near_duplicate_of_generated",
)


def _units(text: str, unit: str) -> list[str]:
    return text.split() if unit == "word" else list(text)


def ngrams(text: str, n: int, unit: str = "word") -> frozenset[tuple[str, ...]]:
    """The set of n-grams of `text` in words (whitespace-split) or characters; shorter texts are one n-gram."""
    units = _units(text, unit)
    if not units:
        return frozenset()
    if len(units) < n:
        return frozenset({tuple(units)})
    return frozenset(tuple(units[i : i + n]) for i in range(len(units) - n + 1))


def ngram_overlap(candidate: str, other: str, n: int, unit: str = "word") -> float:
    """|A & B| / |A|: the share of the candidate's n-grams found in `other` (0.0 for an empty candidate)."""
    a = ngrams(candidate, n, unit)
    return len(a & ngrams(other, n, unit)) / len(a) if a else 0.0


@dataclass
class NGramIndex:
    """Texts by their n-grams, so a candidate's largest overlap with all of them costs a pass over its
    own n-grams, not one comparison per stored text."""

    n: int
    unit: str = "word"
    _texts_with: dict = field(default_factory=lambda: defaultdict(list))
    size: int = 0

    def add(self, text: str) -> None:
        for gram in ngrams(text, self.n, self.unit):
            self._texts_with[gram].append(self.size)
        self.size += 1

    def max_overlap(self, text: str) -> float:
        grams = ngrams(text, self.n, self.unit)
        if not grams:
            return 0.0
        shared = Counter(i for gram in grams for i in self._texts_with.get(gram, ()))
        return max(shared.values(), default=0) / len(grams)


@dataclass
class PromptFilter:
    """Decides, prompt by prompt, what to keep; kept prompts join the index the next ones are checked against."""

    seed: Iterable[str]
    avoid: Iterable[str] = ()
    min_length: int = 1
    max_length: int | None = None
    is_valid: Callable[[str], bool] | None = None
    max_overlap: float = 0.7
    ngram_size: int = 3
    ngram_unit: str = "word"

    def __post_init__(self):
        if self.ngram_unit not in ("word", "char"):
            raise ValueError(f"ngram_unit must be 'word' or 'char', got {self.ngram_unit!r}")
        if self.ngram_size < 1 or self.min_length < 1:
            raise ValueError("ngram_size and min_length must be >= 1")
        if self.max_length is not None and self.max_length < self.min_length:
            raise ValueError(f"max_length {self.max_length} is below min_length {self.min_length}")
        if not 0.0 < self.max_overlap <= 1.0:
            raise ValueError(f"max_overlap must be in (0, 1], got {self.max_overlap}")
        self.indexes = {}
        for name, texts in (("seed", self.seed), ("avoided", self.avoid), ("generated", ())):
            self.indexes[name] = NGramIndex(self.ngram_size, self.ngram_unit)
            for text in texts:
                self.indexes[name].add(text)

    def reason_to_drop(self, prompt: str, *, finished: bool = True) -> str | None:
        """None to keep `prompt` (it is then remembered as generated), else one of DROP_REASONS."""
        if not finished:
            return "unfinished"
        if len(prompt) < self.min_length:
            return "too_short"
        if self.max_length is not None and len(prompt) > self.max_length:
            return "too_long"
        if self.is_valid is not None and not self.is_valid(prompt):
            return "failed_parse_check"
        for name, index in self.indexes.items():
            if index.max_overlap(prompt) >= self.max_overlap:
                return f"near_duplicate_of_{name}"
        self.indexes["generated"].add(prompt)
        return None
