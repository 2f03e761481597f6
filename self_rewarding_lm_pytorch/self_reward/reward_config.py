"""The judge as data: a jinja2 prompt template to render and a pattern to read its score back.

`RewardConfig.render(prompt=..., response=...) -> str` and `RewardConfig.parse(text) -> float | None`
(a reference-guided judge's `parse` also takes the judged response). An unparseable judgment is None
(NaN in score tensors) and is dropped, never 0 and never a crash. Running a model as the judge is
`self_reward.judge.judge_scores`.
"""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import jinja2
import jinja2.meta
import jinja2.sandbox

from self_rewarding_lm_pytorch.core.field_types import ADDED_FIELD
from self_rewarding_lm_pytorch.core.templates import sandboxed_environment, unsafe_accesses
from self_rewarding_lm_pytorch.self_reward.consistency import make_answer_extractor

__all__ = ["DEFAULT_JUDGE_PROMPT", "DEFAULT_REWARD_CONFIG", "RewardConfig", "RewardTemplateError"]

_TEMPLATE_VARIABLES = frozenset({"prompt", "response"})
_REWARD_SLOT = re.compile(r"\{\{\s*reward\s*\}\}")
# an integer or decimal; "4." ending a sentence parses as 4 because a dot needs a digit after it
_NUMBER = r"(?P<reward>[-+]?(?:\d+(?:\.\d+)?|\.\d+))"


class RewardTemplateError(ValueError):
    """A judge prompt or reward regex template that cannot work, or that reaches for unsafe attributes
    (raised at construction when visible in the template's text, else when it renders)."""


def _name_of(value):
    """A string as it is; a callable by its qualified name (config files and manifests hold text)."""
    return value if value is None or isinstance(value, str) else getattr(value, "__qualname__", repr(value))


def _literal_pattern(text: str) -> str:
    """Regex for literal template text: escaped, with any run of whitespace matching any whitespace."""
    return r"\s*".join(re.escape(part) for part in re.split(r"\s+", text))


@dataclass(frozen=True)
class RewardConfig:
    """A judge: a jinja2 prompt template over exactly `prompt` and `response`, and a regex template
    where `{{ reward }}` marks the number to read from the judge's answer (the last match wins).

    `auto_dedent` dedents the prompt template and trims blank outer lines (triple-quoted strings);
    `score_range=(lo, hi)` makes scores outside [lo, hi] unparsed (None); `parse_reward(text)`
    replaces the regex entirely (its result still goes through the range check; a ValueError or
    TypeError from it, or a non-number, counts as unparsed).

    `answer_regex` makes the judge reference-guided (Zheng et al. 2023, "Judging LLM-as-a-judge"): the
    judge works the answer out itself, the regex reads that answer from its judgment (group `answer`,
    else the first group, else the whole match; the last match wins), and the verdict is the comparison,
    made here rather than by the judge: the top of `score_range` when the judge's answer equals the
    candidate's (read by `response_answer`: a regex or callable as in `SelfConsistencyReward`, default the
    whole stripped response), else the bottom; no answer is unparsed. For judges that work an answer out
    well but compare poorly (a small model: bench/results/demo.md, round 7). Needs `score_range`.
    """

    prompt_template: str
    reward_regex_template: str
    if TYPE_CHECKING:  # compiled per instance in __post_init__; not dataclass fields
        _template: ClassVar[jinja2.Template]
        _pattern: ClassVar[re.Pattern]
        _answer_pattern: ClassVar[re.Pattern | None]
        _response_answer: ClassVar[Any]  # str -> str | None (a Callable ClassVar would read as a method)
    auto_dedent: bool = True
    score_range: tuple[float, float] | None = None
    parse_reward: Callable[[str], float | None] | None = None
    # added after runs were made with this config: left out of their fingerprints while unset
    answer_regex: str | None = field(default=None, metadata=ADDED_FIELD)
    response_answer: str | Callable[[str], str | None] | None = field(default=None, metadata=ADDED_FIELD)

    def __post_init__(self):
        if not isinstance(self.prompt_template, str) or not isinstance(self.reward_regex_template, str):
            raise TypeError("prompt_template and reward_regex_template must be strings")
        if self.score_range is not None:
            lo, hi = (float(x) for x in self.score_range)
            if not lo < hi:
                raise RewardTemplateError(f"score_range must be (lo, hi) with lo < hi, got {self.score_range}")
            object.__setattr__(self, "score_range", (lo, hi))  # a list from a config file becomes a tuple
        if self.parse_reward is not None and not callable(self.parse_reward):
            raise TypeError("parse_reward must be a callable text -> float | None")
        answer_pattern, response_answer = self._compile_reference_guided()
        # compiled forms are kept off the dataclass fields so the config stays plain, comparable data
        object.__setattr__(self, "_template", self._compile_template())
        object.__setattr__(self, "_pattern", self._compile_pattern())
        object.__setattr__(self, "_answer_pattern", answer_pattern)
        object.__setattr__(self, "_response_answer", response_answer)

    def _compile_reference_guided(self) -> tuple[re.Pattern | None, Callable[[str], str | None]]:
        """The judge's answer pattern (None unless reference-guided) and the candidate's answer extractor."""
        if self.answer_regex is None:
            if self.response_answer is not None:
                raise RewardTemplateError("response_answer is only read with answer_regex (a reference-guided judge)")
            return None, make_answer_extractor(None)
        if not isinstance(self.answer_regex, str):
            raise TypeError(f"answer_regex must be a regex string, got {type(self.answer_regex).__name__}")
        try:
            pattern = re.compile(self.answer_regex)
        except re.error as e:
            raise RewardTemplateError(f"answer_regex is not a valid regex: {e}") from None
        if self.score_range is None:
            raise RewardTemplateError("answer_regex needs score_range: its verdicts are the range's ends")
        if self.parse_reward is not None:
            raise RewardTemplateError("set answer_regex or parse_reward, not both: each decides the score")
        try:
            return pattern, make_answer_extractor(self.response_answer)
        except re.error as e:
            raise RewardTemplateError(f"response_answer is not a valid regex: {e}") from None

    @property
    def is_reference_guided(self) -> bool:
        """True when the score is the comparison of the judge's own answer with the candidate's."""
        return self.answer_regex is not None

    def __getstate__(self):
        # copies (deepcopy, or sending a config to another process) carry only the fields; the compiled
        # template and pattern are rebuilt
        return {f: getattr(self, f) for f in self.__dataclass_fields__}

    def __setstate__(self, state):
        for name, value in state.items():
            object.__setattr__(self, name, value)
        self.__post_init__()

    @property
    def template_source(self) -> str:
        """The prompt template as rendered (after auto-dedent)."""
        text = self.prompt_template
        return textwrap.dedent(text).strip("\n") if self.auto_dedent else text

    def _compile_template(self) -> jinja2.Template:
        # Judge templates are shared like data (TOML files, papers' repositories): render them
        # sandboxed, and refuse at once what can be seen to reach into Python's object graph.
        env = sandboxed_environment()
        try:
            parsed = env.parse(self.template_source)
        except jinja2.TemplateSyntaxError as e:
            raise RewardTemplateError(f"prompt_template is not valid jinja2: {e}") from None
        unsafe = unsafe_accesses(parsed)
        if unsafe:
            raise RewardTemplateError(f"prompt_template reaches for unsafe attributes: {'; '.join(unsafe)}")
        found = jinja2.meta.find_undeclared_variables(parsed)
        missing, unknown = sorted(_TEMPLATE_VARIABLES - found), sorted(found - _TEMPLATE_VARIABLES)
        if missing or unknown:
            raise RewardTemplateError(
                "prompt_template must use exactly the variables {{ prompt }} and {{ response }}"
                + (f"; missing: {missing}" if missing else "")
                + (f"; unknown: {unknown}" if unknown else "")
            )
        return env.from_string(self.template_source)

    def _compile_pattern(self) -> re.Pattern:
        source = self.reward_regex_template.strip()
        slots = _REWARD_SLOT.findall(source)
        if len(slots) != 1:
            raise RewardTemplateError(
                f"reward_regex_template must contain {{{{ reward }}}} exactly once, found {len(slots)}: {source!r}"
            )
        before, after = (part.strip() for part in _REWARD_SLOT.split(source))
        # (?<!\w): "Score:" must not match inside "Subscore:"
        pattern = (r"(?<!\w)" + _literal_pattern(before) + r"\s*" if before else "") + _NUMBER
        pattern += r"\s*" + _literal_pattern(after) if after else ""
        return re.compile(pattern, re.IGNORECASE)

    def to_dict(self) -> dict:
        """JSON-friendly fields (a custom `parse_reward` or `response_answer` callable is named, not serialised)."""
        return {
            "prompt_template": self.prompt_template,
            "reward_regex_template": self.reward_regex_template,
            "auto_dedent": self.auto_dedent,
            "score_range": list(self.score_range) if self.score_range else None,
            "parse_reward": _name_of(self.parse_reward),
            "answer_regex": self.answer_regex,
            "response_answer": _name_of(self.response_answer),
        }

    @property
    def pattern(self) -> re.Pattern:
        """The compiled reward pattern; its group `reward` is the number."""
        return self._pattern

    def render(self, *, prompt: str, response: str) -> str:
        """The judge prompt for one (prompt, response)."""
        try:
            return self._template.render(prompt=prompt, response=response)
        except jinja2.sandbox.SecurityError as e:  # an unsafe access computed at render time
            raise RewardTemplateError(f"prompt_template reaches for unsafe attributes: {e}") from None

    def parse(self, text: str, *, response: str | None = None) -> float | None:
        """The score in a judge's answer (the last match), or None if there is none or it is out of range.

        A reference-guided judge (`answer_regex`) needs the judged `response` to compare its answer with."""
        if self._answer_pattern is not None:
            if response is None:
                raise ValueError("a reference-guided judge (answer_regex) needs the judged response to parse a verdict")
            return self._verdict(text, response)
        if self.parse_reward is not None:
            try:
                raw = self.parse_reward(text)
                value = None if raw is None else float(raw)
            except (TypeError, ValueError):
                return None
        else:
            matches = list(self._pattern.finditer(text))
            value = float(matches[-1].group("reward")) if matches else None
        if value is None or not math.isfinite(value):
            return None
        if self.score_range is not None and not self.score_range[0] <= value <= self.score_range[1]:
            return None
        return value

    def judge_answer(self, text: str) -> str | None:
        """The answer a reference-guided judge worked out in `text` (its last match), or None."""
        if self._answer_pattern is None:
            raise ValueError("judge_answer needs answer_regex")
        matches = list(self._answer_pattern.finditer(text))
        if not matches:
            return None
        last, pattern = matches[-1], self._answer_pattern
        if "answer" in pattern.groupindex:
            answer = last.group("answer")
        else:
            answer = last.group(1) if pattern.groups else last.group(0)
        return (answer or "").strip() or None

    def _verdict(self, text: str, response: str) -> float | None:
        assert self.score_range is not None  # checked at construction
        judged = self.judge_answer(text)
        if judged is None:
            return None
        agrees = judged == self._response_answer(response)
        return self.score_range[1] if agrees else self.score_range[0]


# Kept to a few hundred characters on purpose: with byte-level tokenizers every character is a
# token, and tiny models have contexts of a few hundred tokens; the judge template plus the prompt,
# the response and the judge's own answer must all fit (the reference package's 2,700-byte prompt
# did not, so every judgment was empty). Wording is ours; the rubric follows Yuan et al. 2024.
DEFAULT_JUDGE_PROMPT = """\
Rate the answer to the question. Add 1 point for each that holds:
it is relevant; it covers most of the question; it usefully answers the core of it;
it is clear and well organised; it shows expertise, with no filler.
Question: {{ prompt }}
Answer: {{ response }}
Justify briefly, then end with "Score: <points>" (0 to 5).
"""

DEFAULT_REWARD_CONFIG = RewardConfig(DEFAULT_JUDGE_PROMPT, "Score: {{ reward }}", score_range=(0.0, 5.0))
