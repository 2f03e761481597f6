"""The demo's built-in verifiable task: multi-digit addition, with seed data for the paper's recipe.

A prompt is `"37+485="`, the answer `"522"` (the demo uses up to two digits by default). Quality is
measured exactly by `is_correct`.

The seed data follows Yuan et al. (2024): instruction-following examples (prompt -> correct answer)
and evaluation-fine-tuning examples (a judge prompt rendered with `DEMO_JUDGE_TEMPLATE` -> a
justification and `Score: <n>`), built from correct and deliberately wrong answers. The judge prompt
puts the judged answer first and ends with the problem (`"Judge 145 ? 57+89="`), so the judge works
the sum out right after `a+b=` instead of right after the judged answer (where copying it was the
easy way out, see bench/results/demo.md). The justification makes checking easier than solving:
the solver writes the sum's leading digit first, which needs the carries of every lower digit at
once, while the judge adds column by column from the units up, writing each column's carry
(`"790:16 581:14"`: 7+9+0 = 16, then 5+8+1 = 14), so every step is one lookup in a 200-entry table
(two digits and a carry). It then assembles the true sum from the steps (`"146"`), lines it up with
the judged answer digit by digit with a mark per digit (`"11=44=65!"`), and the verdict only has to
spot a `!`: `"790:16 581:14 146 11=44=65! Score: 1"`.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from beartype import beartype

from self_rewarding_lm_pytorch.self_reward.consistency import SelfConsistencyReward

__all__ = [
    "CORRECT_SCORE",
    "DEMO_FEW_SHOT_TEMPLATE",
    "DEMO_JUDGE_ANSWER_REGEX",
    "DEMO_JUDGE_REGEX",
    "DEMO_JUDGE_TEMPLATE",
    "WRONG_SCORE",
    "AdditionTask",
    "DemoData",
    "consistency_reward",
    "demo_reward_config",
    "digit_marks",
    "is_addition_prompt",
    "is_correct",
    "judge_steps",
    "judge_target",
    "parse_prompt",
    "render_judge_prompt",
    "verifier_reward",
]

# How the demo's model is shown seed prompts to write a new one (prompt self-generation): compact,
# so four shots and the new prompt fit the 64-token context.
DEMO_FEW_SHOT_TEMPLATE = "New {% for example in examples %}{{ example }} {% endfor %}->"

# Compact on purpose: the judge prompt, the candidate and the judgment must fit a ~128-token
# byte-level context (the reference package's default judge prompt alone is ~2,700 bytes).
DEMO_JUDGE_TEMPLATE = "Judge {{ response }} ? {{ prompt }}"
DEMO_JUDGE_REGEX = "Score: {{ reward }}"
# The sum the judge worked out: the number right after its last column step (`"...581:14 146 11=..."`).
DEMO_JUDGE_ANSWER_REGEX = r":\d\d\s+(?P<answer>\d+)\s"
CORRECT_SCORE = 5
WRONG_SCORE = 1

_PROMPT = re.compile(r"^\s*(\d+)\+(\d+)=\s*$")


def parse_prompt(prompt: str) -> tuple[int, int]:
    """The two operands of an addition prompt such as `"37+485="`."""
    match = _PROMPT.match(prompt)
    if match is None:
        raise ValueError(f"not an addition prompt of the form 'a+b=': {prompt!r}")
    return int(match.group(1)), int(match.group(2))


def is_addition_prompt(text: str) -> bool:
    """The parse check for self-generated prompts: `"a+b="` with decimal operands (no answer needed)."""
    return _PROMPT.match(text) is not None and not text.startswith(" ")


@beartype
def is_correct(prompt: str, response: str) -> bool:
    """True iff `response` (surrounding whitespace ignored) is exactly the decimal sum."""
    a, b = parse_prompt(prompt)
    return response.strip() == str(a + b)


def verifier_reward(prompts: list[str], responses: list[str]) -> list[float]:
    """The ground-truth reward for the oracle line: 1.0 for a correct answer, 0.0 otherwise."""
    return [float(is_correct(p, r)) for p, r in zip(prompts, responses, strict=True)]


def _extract_number(response: str) -> str | None:
    """The answer a response gives: its leading decimal number (leading zeros dropped), None if there is none."""
    match = re.match(r"\s*(\d+)", response)
    return None if match is None else str(int(match.group(1)))


# The self-consistency reward of the demo's consistency line: a candidate scores the share of its
# prompt's samples that give the same number.
consistency_reward = SelfConsistencyReward(_extract_number)


def render_judge_prompt(prompt: str, response: str) -> str:
    """What `demo_reward_config().render` produces, without jinja2 (used to cross-check it in tests)."""
    return f"Judge {response} ? {prompt}"


def digit_marks(expected: str, judged: str, sep: str = " ") -> str:
    """The two numbers lined up from the left, one `<expected digit><judged digit><mark>` group per
    position, `=` where they agree and `!` where not; `_` pads the shorter: `("46", "45") -> "44= 65!"`."""
    width = max(len(expected), len(judged))
    pairs = zip(expected.ljust(width, "_"), judged.ljust(width, "_"), strict=True)
    return sep.join(f"{x}{y}{'=' if x == y else '!'}" for x, y in pairs)


def judge_steps(a: int, b: int, digits: int) -> str:
    """Column-by-column addition from the units up, one `<a digit><b digit><carry in>:<carry out><digit>`
    step per column of the operands zero-padded to `digits`: `(57, 89, 2) -> "790:16 581:14"`.

    Each step depends only on three characters (two operand digits, read from the prompt, and the
    previous step's carry): the solver's one-shot sum needs every column's carry at once.
    """
    if a < 0 or b < 0 or max(a, b) >= 10**digits:
        raise ValueError(f"operands {a} and {b} do not fit in {digits} digits")
    xs, ys = str(a).zfill(digits)[::-1], str(b).zfill(digits)[::-1]
    steps, carry = [], 0
    for x, y in zip(xs, ys, strict=True):
        total = int(x) + int(y) + carry
        steps.append(f"{x}{y}{carry}:{total // 10}{total % 10}")
        carry = total // 10
    return " ".join(steps)


def judge_target(prompt: str, response: str, digits: int = 2) -> str:
    """The evaluation-fine-tuning target: the column steps (`judge_steps`, operands padded to `digits`,
    at least the longer operand's length), the true sum, its digit-by-digit comparison with the judged
    answer, the score: `"790:16 581:14 146 11=44=65! Score: 1"` for `57+89=` judged `145`.

    Each step is one lookup of three characters, each mark depends only on the two characters just
    before it, and the verdict only on whether a `!` occurred: a tiny model learns these local steps,
    where a single verdict after `"12+34=46 vs 45:"` stayed near chance, and the true sum written in
    one shot repeated the solver's own mistakes (bench/results/demo.md, rounds 2 and 6).
    """
    a, b = parse_prompt(prompt)
    expected, judged = str(a + b), response.strip()
    score = CORRECT_SCORE if expected == judged else WRONG_SCORE
    steps = judge_steps(a, b, max(digits, len(str(a)), len(str(b))))
    return f"{steps} {expected} {digit_marks(expected, judged, sep='')} Score: {score}"


def demo_reward_config(reference_guided: bool = False):
    """The judge `RewardConfig` the demo's model is trained to follow and judged with.

    `reference_guided`: the verdict is the comparison of the sum the judge worked out with the judged
    answer (`RewardConfig.answer_regex`), not the `Score:` the judge wrote after comparing them itself.
    """
    from self_rewarding_lm_pytorch.self_reward.reward_config import RewardConfig

    # auto_dedent off: the template is one line and must render byte for byte as the EFT data was.
    return RewardConfig(
        prompt_template=DEMO_JUDGE_TEMPLATE,
        reward_regex_template=DEMO_JUDGE_REGEX,
        auto_dedent=False,
        score_range=(float(WRONG_SCORE), float(CORRECT_SCORE)),
        answer_regex=DEMO_JUDGE_ANSWER_REGEX if reference_guided else None,
    )


def _wrong_answer(a: int, b: int, rng: random.Random) -> str:
    """A plausible mistake: a dropped carry, an off-by-one/ten, or one changed digit."""
    right = a + b
    for _ in range(20):
        kind = rng.randrange(4)
        if kind == 0:  # digit-wise sum without carries, the classic error
            da, db = str(a)[::-1], str(b)[::-1]
            digits = [
                (int(da[i]) if i < len(da) else 0) + (int(db[i]) if i < len(db) else 0)
                for i in range(max(len(da), len(db)))
            ]
            wrong = int("".join(str(d % 10) for d in reversed(digits)))
        elif kind == 1:
            wrong = right + rng.choice([-1, 1])
        elif kind == 2:
            wrong = right + rng.choice([-10, 10, -100, 100])
        else:
            s = list(str(right))
            i = rng.randrange(len(s))
            s[i] = str((int(s[i]) + rng.randrange(1, 10)) % 10)
            wrong = int("".join(s))
        if wrong != right and wrong >= 0:
            return str(wrong)
    return str(right + 1)


@dataclass
class DemoData:
    """Everything the demo trains and evaluates on (records are plain dicts, JSONL-ready)."""

    instruction: list[dict]  # {"prompt", "response"}
    evaluation: list[dict]  # {"prompt": judge prompt, "response": justification + score}
    self_reward_prompts: list[str]  # prompts for the self-reward iterations (no answers used)
    heldout_prompts: list[str]  # never trained on
    stats: dict = field(default_factory=dict)

    @property
    def sft(self) -> list[dict]:
        return self.instruction + self.evaluation


@dataclass(frozen=True)
class AdditionTask:
    """Addition of two numbers with 1..`max_digits` digits each (digit counts drawn uniformly)."""

    max_digits: int = 3
    # The share of the judge examples' deliberately wrong answers drawn uniformly from 0 .. the largest
    # sum instead of as a plausible mistake: where the judged answer's digits say nothing about the true
    # sum's, the judge's column steps cannot copy them and must compute (bench/results/demo.md, round 6).
    random_wrong_fraction: float = 0.0

    def __post_init__(self):
        if not 1 <= self.max_digits <= 9:
            raise ValueError(f"max_digits must be in 1..9, got {self.max_digits}")
        if not 0.0 <= self.random_wrong_fraction <= 1.0:
            raise ValueError(f"random_wrong_fraction must be in [0, 1], got {self.random_wrong_fraction}")

    def longest_judgment(self) -> tuple[int, int]:
        """`(prompt, target)` byte lengths of the longest judge example (its EOS not counted): the
        largest operands judged against the longest plausible wrong answer (the sum + 100)."""
        largest = 10**self.max_digits - 1
        prompt = f"{largest}+{largest}="
        response = str(2 * largest + 100)
        return len(render_judge_prompt(prompt, response).encode()), len(
            judge_target(prompt, response, self.max_digits).encode()
        )

    def check_judge_fits(self, max_seq_len: int, judge_max_new_tokens: int) -> None:
        """Raise `ValueError` unless the longest judge example fits the context (prompt + target + EOS)
        and the judge may write its whole target (`judge_max_new_tokens` >= target + EOS)."""
        prompt_len, target_len = self.longest_judgment()
        if prompt_len + target_len + 1 > max_seq_len:
            raise ValueError(
                f"{self.max_digits}-digit judge examples need {prompt_len + target_len + 1} tokens (prompt "
                f"{prompt_len} + target {target_len} + EOS) but max_seq_len is {max_seq_len}: raise max_seq_len "
                "or lower max_digits"
            )
        if judge_max_new_tokens < target_len + 1 or prompt_len + judge_max_new_tokens > max_seq_len:
            raise ValueError(
                f"judge_max_new_tokens must be in [{target_len + 1}, {max_seq_len - prompt_len}] for "
                f"{self.max_digits}-digit judge examples (target {target_len} + EOS, prompt {prompt_len}, "
                f"max_seq_len {max_seq_len}), got {judge_max_new_tokens}"
            )

    def _operand(self, rng: random.Random) -> int:
        digits = rng.randint(1, self.max_digits)
        return rng.randrange(10 ** (digits - 1) if digits > 1 else 0, 10**digits)

    def sample_prompts(self, n: int, rng: random.Random, exclude: AbstractSet[str] = frozenset()) -> list[str]:
        """`n` distinct prompts not in `exclude`."""
        out: list[str] = []
        seen = set(exclude)
        attempts = 0
        while len(out) < n:
            attempts += 1
            if attempts > 100 * n + 1000:
                raise ValueError(f"cannot draw {n} distinct prompts with max_digits={self.max_digits}")
            prompt = f"{self._operand(rng)}+{self._operand(rng)}="
            if prompt not in seen:
                seen.add(prompt)
                out.append(prompt)
        return out

    def answer(self, prompt: str) -> str:
        a, b = parse_prompt(prompt)
        return str(a + b)

    def wrong_answer(self, prompt: str, rng: random.Random) -> str:
        return _wrong_answer(*parse_prompt(prompt), rng)

    def random_wrong_answer(self, prompt: str, rng: random.Random) -> str:
        """A wrong answer drawn uniformly from 0 .. the largest sum of two `max_digits`-digit numbers."""
        right = sum(parse_prompt(prompt))
        wrong = rng.randrange(2 * 10**self.max_digits - 2)
        return str(wrong if wrong < right else wrong + 1)

    def instruction_examples(self, prompts: list[str]) -> list[dict]:
        return [{"prompt": p, "response": self.answer(p)} for p in prompts]

    def evaluation_examples(
        self, prompts: list[str], rng: random.Random, render=render_judge_prompt, correct_fraction: float = 0.5
    ) -> list[dict]:
        """One judged answer per prompt: correct with probability `correct_fraction`, else deliberately wrong."""
        if not 0.0 <= correct_fraction <= 1.0:
            raise ValueError(f"correct_fraction must be in [0, 1], got {correct_fraction}")
        records = []
        for p in prompts:
            if rng.random() < correct_fraction:
                response = self.answer(p)
            elif self.random_wrong_fraction and rng.random() < self.random_wrong_fraction:
                response = self.random_wrong_answer(p, rng)
            else:
                response = self.wrong_answer(p, rng)
            target = judge_target(p, response, self.max_digits)
            records.append({"prompt": render(p, response), "response": target})
        return records

    def prompt_writing_examples(self, prompts: list[str], count: int, shots: int, rng: random.Random) -> list[dict]:
        """Seed examples of the task the paper's base model can already do: given `shots` prompts in the
        few-shot template, write another one (drawn from the same prompts, never one of the shots)."""
        from self_rewarding_lm_pytorch.self_reward.prompt_generation import render_few_shot

        records = []
        for _ in range(count):
            drawn = rng.sample(prompts, shots + 1)
            records.append({"prompt": render_few_shot(DEMO_FEW_SHOT_TEMPLATE, drawn[:shots]), "response": drawn[-1]})
        return records

    def build(
        self,
        *,
        num_instruction: int,
        num_evaluation: int,
        num_self_reward_prompts: int,
        num_heldout: int,
        seed: int = 0,
        render=None,
        correct_fraction: float = 0.5,
    ) -> DemoData:
        """Disjoint prompt sets, split at random from one pool of distinct prompts.

        One pool, shuffled, then cut: every set follows the same distribution, so the held-out prompts
        look like the training prompts and the prompts the model writes after them (drawn first, as
        before, the held-out set took most of the few 1-digit + 1-digit sums: 16% of it instead of 1%).
        `render(prompt, response) -> str` renders a judge prompt; default `demo_reward_config().render`.
        """
        if render is None:
            config = demo_reward_config()
            render = lambda p, r: config.render(prompt=p, response=r)  # noqa: E731
        rng = random.Random(seed)
        sizes = [num_heldout, num_instruction, num_self_reward_prompts, num_evaluation]
        pool = self.sample_prompts(sum(sizes), rng)
        rng.shuffle(pool)
        cuts = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
        heldout, train, self_reward, judged = (pool[lo:hi] for lo, hi in itertools.pairwise(cuts))
        # Evaluation examples get prompts of their own, as the paper's EFT data is separate data: when
        # they reused instruction prompts, the judge memorised verdicts instead of learning to compare.
        evaluation = self.evaluation_examples(judged, rng, render, correct_fraction)
        stats = {
            "num_instruction": len(train),
            "num_evaluation": len(evaluation),
            "num_evaluation_correct": sum(r["response"].endswith(f"Score: {CORRECT_SCORE}") for r in evaluation),
            "num_self_reward_prompts": len(self_reward),
            "num_heldout": len(heldout),
        }
        return DemoData(self.instruction_examples(train), evaluation, self_reward, heldout, stats)
