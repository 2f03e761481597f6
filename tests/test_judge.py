import copy
import json
import math
import pickle

import pytest
import torch

from self_rewarding_lm_pytorch.core.tokenizer import ByteTokenizer
from self_rewarding_lm_pytorch.self_reward.judge import (
    DEFAULT_JUDGE_PROMPT,
    DEFAULT_REWARD_CONFIG,
    RewardConfig,
    RewardTemplateError,
    judge_scores,
)

pytestmark = pytest.mark.unit


class ScriptedModel(torch.nn.Module):
    """A fake causal LM (for the byte tokenizer) whose continuations the test dictates.

    The context is split at its last `marker`: `script(prefix)` (the text up to and including the
    marker) returns the answer, or a list of answers. The logits put equal mass on every next
    character that keeps the generated text a prefix of some answer, EOS once an answer is complete,
    and about e^-30 elsewhere. Only the last position is scripted (the sampler's no-cache path reads
    only that one, so use_cache=False).
    """

    def __init__(self, tokenizer, script, *, marker="|", max_seq_len=256):
        super().__init__()
        self.tok, self.script, self.marker, self.max_seq_len = tokenizer, script, marker, max_seq_len
        self.register_buffer("anchor", torch.zeros(1))  # gives the module a device
        self.calls = 0

    def next_chars(self, context: str) -> set:
        cut = context.rfind(self.marker)
        if cut < 0:
            return {self.tok.eos_id}
        prefix, generated = context[: cut + 1], context[cut + 1 :]
        answers = self.script(prefix)
        answers = [answers] if isinstance(answers, str) else answers
        nexts = {
            self.tok.eos_id if a == generated else ord(a[len(generated)]) for a in answers if a.startswith(generated)
        }
        return nexts or {self.tok.eos_id}

    def forward(self, ids, **kwargs):
        self.calls += 1
        b, n = ids.shape
        logits = torch.full((b, n, self.tok.vocab_size), -30.0)
        for row in range(b):
            for token in self.next_chars(self.tok.decode(ids[row])):
                logits[row, -1, token] = 0.0
        return logits


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Score: 4", 4.0),
        ("Score: 4.5", 4.5),
        ("The answer is fine.", None),
        ("", None),
        ("Score: 2 ... on reflection, Score: 3", 3.0),  # two scores: the last wins
        ("It covers everything. Score: 4.", 4.0),  # a sentence period is not a decimal point
        ("Score: 7", None),  # out of the 0..5 range
        ("Score: -1", None),
        ("score: 4", 4.0),  # case-insensitive
        ("SCORE:3", 3.0),  # flexible whitespace, even none
        ("Score:\n  5", 5.0),
        ("Relevant, clear, expert.\nScore: 5\nThanks!", 5.0),  # surrounding text
        ("Score: .5", 0.5),
        ("Score: five", None),
        ("Subscore: 4", None),  # "Score:" inside another word is not the score
        ("Score: 4/5", 4.0),
    ],
)
def test_default_parse_table(text, expected):
    assert DEFAULT_REWARD_CONFIG.parse(text) == expected


def seed_readme_config():
    """The custom config from the seed README, verbatim (triple-quoted, indented by the user)."""
    return RewardConfig(
        prompt_template="""
        Pretty please rate the following user prompt and response
        User: {{ prompt }}
        Response: {{ response }}
        Format your score as follows:
        Rating: <rating as integer from 0 - 10>
        """,
        reward_regex_template="""
        Rating: {{ reward }}
        """,
    )


def test_seed_readme_custom_config():
    config = seed_readme_config()
    text = config.render(prompt="What is 2+2?", response="4")
    assert text.startswith(
        "Pretty please rate the following user prompt and response\nUser: What is 2+2?\nResponse: 4\n"
    )
    assert text.endswith("Rating: <rating as integer from 0 - 10>")
    assert config.parse("I think... Rating: 8") == 8.0
    assert config.parse("Rating: <rating as integer from 0 - 10>") is None  # the echoed instruction
    assert config.parse("rating:10") == 10.0  # no range set: any number


def test_auto_dedent_off_keeps_the_template():
    config = RewardConfig("  A {{ prompt }} B {{ response }}\n", "Score: {{ reward }}", auto_dedent=False)
    assert config.render(prompt="x", response="y") == "  A x B y\n"


@pytest.mark.parametrize(
    "template, names",
    [
        ("Rate {{ prompt }}", ["missing", "response"]),
        ("Rate {{ response }}", ["missing", "prompt"]),
        ("Rate {{ prompt }} {{ response }} {{ rubric }}", ["unknown", "rubric"]),
        ("Rate {{ question }} {{ answer }}", ["prompt", "response", "question", "answer"]),
    ],
)
def test_template_variables_checked_at_construction(template, names):
    with pytest.raises(RewardTemplateError) as info:
        RewardConfig(template, "Score: {{ reward }}")
    for name in names:
        assert name in str(info.value)


@pytest.mark.parametrize("regex", ["Score: <n>", "Score: {{ reward }} or {{ reward }}", "{{ score }}"])
def test_regex_template_needs_one_reward_slot(regex):
    with pytest.raises(RewardTemplateError, match="reward"):
        RewardConfig("{{ prompt }} {{ response }}", regex)


def test_bad_template_and_range():
    with pytest.raises(RewardTemplateError, match="jinja2"):
        RewardConfig("{{ prompt } {{ response }}", "Score: {{ reward }}")
    with pytest.raises(RewardTemplateError, match="lo < hi"):
        RewardConfig("{{ prompt }} {{ response }}", "Score: {{ reward }}", score_range=(5, 0))


def test_regex_special_characters_are_literal_and_suffix_is_matched():
    """'[' and '.' in the template are literal text; text after {{ reward }} must follow the number."""
    config = RewardConfig("{{ prompt }}{{ response }}", "[Grade] {{ reward }} / 10.")
    assert config.parse("[grade] 7 / 10.") == 7.0
    assert config.parse("[grade] 7 of 10") is None
    assert config.parse("Grade 7 / 10.") is None


def test_custom_parse_reward_goes_through_range():
    config = RewardConfig(
        "{{ prompt }}{{ response }}",
        "Score: {{ reward }}",
        score_range=(0, 5),
        parse_reward=lambda t: float(t.split("=")[-1]),
    )
    assert config.parse("x=3") == 3.0
    assert config.parse("x=9") is None  # out of range
    assert config.parse("no number") is None  # the parser's ValueError counts as unparsed
    assert (
        RewardConfig("{{ prompt }}{{ response }}", "S {{ reward }}", parse_reward=lambda t: math.nan).parse("S 1")
        is None
    )
    assert (
        RewardConfig("{{ prompt }}{{ response }}", "S {{ reward }}", parse_reward=lambda t: "high").parse("S 1") is None
    )


def test_default_prompt_is_short_and_renders():
    """Byte tokenizers make every character a token; the default must leave room in a small context."""
    rendered = DEFAULT_REWARD_CONFIG.render(prompt="", response="")
    assert len(rendered.encode()) < 400
    assert "{{" not in rendered and rendered.rstrip().endswith("(0 to 5).")
    assert DEFAULT_REWARD_CONFIG.render(prompt="Q?", response="A!").count("Q?") == 1
    assert DEFAULT_JUDGE_PROMPT.count("Score: <points>") == 1


def test_config_is_plain_data():
    config = seed_readme_config()
    for clone in (copy.deepcopy(config), pickle.loads(pickle.dumps(DEFAULT_REWARD_CONFIG))):
        assert clone.parse("Rating: 3 Score: 2") in (3.0, 2.0)
    assert copy.deepcopy(config) == config and config != DEFAULT_REWARD_CONFIG
    listed = RewardConfig("{{ prompt }}{{ response }}", "S {{ reward }}", score_range=[0, 5])  # e.g. from JSON
    assert listed.score_range == (0.0, 5.0) and hash(listed) == hash(listed)
    assert json.loads(json.dumps(DEFAULT_REWARD_CONFIG.to_dict()))["score_range"] == [0.0, 5.0]


def scripted_judge_scores(config, script, prompts, responses, *, num_judgments):
    """judge_scores with a ScriptedModel judge (sampled, seeded; the script leaves one choice per step)."""
    tok = ByteTokenizer()
    judge = ScriptedModel(tok, script, max_seq_len=128)
    return judge_scores(
        judge,
        tok,
        config,
        prompts,
        responses,
        num_judgments=num_judgments,
        max_new_tokens=16,
        generator=torch.Generator().manual_seed(0),
        use_cache=False,
    )


def test_judge_scores_with_a_scripted_judge():
    """The scripted judge answers 'Score: <n>' with n = the number of '!' in the response, and
    garbage for responses containing '?'. Three judgments each: means 1, 3, NaN (3 failures)."""
    config = RewardConfig("J {{ prompt }}|{{ response }}|", "Score: {{ reward }}", score_range=(0, 5))
    script = lambda text: "zzz" if "?" in text else f"Score: {text.count('!')}"
    result = scripted_judge_scores(config, script, ["a", "b", "c"], ["x!", "y!!!", "?"], num_judgments=3)
    assert result.scores[:2].tolist() == [1.0, 3.0] and math.isnan(result.scores[2])
    assert result.texts[0] == ["Score: 1"] * 3 and result.texts[2] == ["zzz"] * 3
    assert result.parsed[2] == [None, None, None]
    assert result.num_failed == 3 and result.num_skipped == 0 and result.num_judgments == 9


def test_judge_scores_skips_prompts_that_do_not_fit():
    """max_seq_len 40, budget 12: judge prompts over 28 tokens are not judged (NaN, counted)."""
    tok = ByteTokenizer()
    config = RewardConfig("J {{ prompt }}|{{ response }}|", "Score: {{ reward }}")
    judge = ScriptedModel(tok, lambda text: "Score: 2", max_seq_len=40)
    result = judge_scores(
        judge, tok, config, ["a", "b" * 30], ["x", "y"], num_judgments=2, max_new_tokens=12, use_cache=False
    )
    assert result.scores[0].item() == 2.0 and math.isnan(result.scores[1])
    assert result.num_skipped == 1 and result.texts[1] == [] and result.num_failed == 0


def test_a_pair_skipped_for_length_keeps_the_draws_of_the_pairs_after_it():
    """A judge call split across processes (first_pair) draws what the whole call draws, even when a pair
    before the split is too long to judge: the skipped pair leaves a gap in the sampling keys rather than
    shifting the later pairs onto its keys (which made two-process PPO with a self-judge differ)."""
    from conftest import tiny_lm

    tok, judge = ByteTokenizer(), tiny_lm(max_seq_len=48)
    config = RewardConfig("J {{ prompt }}|{{ response }}|", "Score: {{ reward }}")
    prompts, responses = ["ab", "c" * 40, "de", "fg"], ["x", "y", "z", "w"]

    def judged(lo, hi, first_pair):
        result = judge_scores(
            judge, tok, config, prompts[lo:hi], responses[lo:hi], num_judgments=2, max_new_tokens=8,
            temperature=1.0, top_p=None, generator=torch.Generator().manual_seed(5), first_pair=first_pair,
        )  # fmt: skip
        return result.texts

    whole = judged(0, 4, 0)
    assert whole[1] == [] and len(set(map(tuple, whole))) == 4  # pair 1 skipped; the others drew apart
    assert judged(0, 2, 0) + judged(2, 4, 2) == whole  # two "processes" with two pairs each
    assert judged(3, 4, 3) == whole[3:]


def test_prompt_positions_give_each_prompt_the_rows_of_its_place_in_the_whole_call():
    from conftest import tiny_lm

    from self_rewarding_lm_pytorch.core.sampling import sample

    model, prompts = tiny_lm(), [torch.tensor([65 + i, 66]) for i in range(4)]

    def drawn(chosen, positions=None):
        out = sample(
            model, [prompts[i] for i in chosen], max_new_tokens=6, num_samples=3, temperature=1.0,
            generator=torch.Generator().manual_seed(2), prompt_positions=positions,
        )  # fmt: skip
        return out.response_ids.view(len(chosen), 3, -1)

    whole = drawn([0, 1, 2, 3])
    some = drawn([1, 3], positions=[1, 3])
    assert torch.equal(some[0, :, : whole.shape[-1]], whole[1, :, : some.shape[-1]])
    assert torch.equal(some[1, :, : whole.shape[-1]], whole[3, :, : some.shape[-1]])
    assert not torch.equal(drawn([1, 3])[1], some[1])  # without positions, prompt 3 takes place 1's draws
    with pytest.raises(ValueError, match="distinct"):
        drawn([1, 3], positions=[2, 2])
    with pytest.raises(ValueError, match="2 entries for 1 prompts"):
        drawn([1], positions=[0, 1])


def reference_config(**kwargs):
    return RewardConfig(
        "Q {{ prompt }} A {{ response }}",
        "Score: {{ reward }}",
        score_range=(1, 5),
        answer_regex=r"my answer: (?P<answer>\w+)",
        **kwargs,
    )


def test_reference_guided_verdict_compares_the_judges_answer_with_the_response():
    """The verdict ignores the judge's own Score: the top of the range when its worked answer equals
    the candidate's, the bottom otherwise; the last answer written wins; no answer is unparsed."""
    config = reference_config()
    assert config.is_reference_guided and not DEFAULT_REWARD_CONFIG.is_reference_guided
    assert config.parse("my answer: 42 so Score: 1", response=" 42\n") == 5.0
    assert config.parse("my answer: 41 so Score: 5", response="42") == 1.0
    assert config.parse("my answer: 42, no, my answer: 43", response="42") == 1.0
    assert config.judge_answer("my answer: 42, no, my answer: 43") == "43"
    assert config.parse("Score: 5", response="42") is None
    with pytest.raises(ValueError, match="needs the judged response"):
        config.parse("my answer: 42")


def test_reference_guided_reads_the_candidates_answer_with_response_answer():
    config = reference_config(response_answer=r"is (\d+)")
    assert config.parse("my answer: 7", response="I think it is 7.") == 5.0
    assert config.parse("my answer: 7", response="no idea") == 1.0  # no answer to agree with
    by_callable = reference_config(response_answer=lambda r: r.split()[-1])
    assert by_callable.parse("my answer: 7", response="so 7") == 5.0
    assert pickle.loads(pickle.dumps(reference_config())).parse("my answer: 7", response="7") == 5.0
    sent = pickle.loads(pickle.dumps(reference_config(response_answer=r"is (\d+)")))  # as to a worker process
    assert sent.parse("my answer: 7", response="it is 7") == 5.0 and sent.response_answer == r"is (\d+)"
    assert reference_config().to_dict()["answer_regex"] == r"my answer: (?P<answer>\w+)"


def test_reference_guided_bad_settings_fail_at_construction():
    with pytest.raises(RewardTemplateError, match="score_range"):
        RewardConfig("{{ prompt }}{{ response }}", "S {{ reward }}", answer_regex="(\\d+)")
    with pytest.raises(RewardTemplateError, match="not a valid regex"):
        RewardConfig("{{ prompt }}{{ response }}", "S {{ reward }}", score_range=(0, 1), answer_regex="(")
    with pytest.raises(RewardTemplateError, match="not both"):
        reference_config(parse_reward=float)
    with pytest.raises(RewardTemplateError, match="response_answer is not a valid regex"):
        reference_config(response_answer="(")
    with pytest.raises(RewardTemplateError, match="only read with answer_regex"):
        RewardConfig("{{ prompt }}{{ response }}", "S {{ reward }}", response_answer=r"(\d+)")


def test_judge_scores_with_a_reference_guided_judge():
    """The scripted judge always works out 'ans 4' and writes Score: 5: only the candidate '4' is right."""
    config = RewardConfig(
        "J {{ prompt }}|{{ response }}|", "Score: {{ reward }}", score_range=(0, 5), answer_regex=r"ans (\d+)"
    )
    result = scripted_judge_scores(
        config, lambda text: "ans 4 Score: 5", ["2+2"] * 3, ["4", "5", " 4"], num_judgments=2
    )
    assert result.scores.tolist() == [5.0, 0.0, 5.0]
    assert result.parsed == [[5.0, 5.0], [0.0, 0.0], [5.0, 5.0]] and result.num_failed == 0


def test_a_greedy_judge_judges_each_distinct_judge_prompt_once():
    """Greedy judgments of repeated (prompt, response) pairs are computed once and copied: the model sees
    the 2 distinct judge prompts (not 5 pairs x 3 judgments), and the result is what each pair gets alone."""
    tok = ByteTokenizer()
    config = RewardConfig("J {{ prompt }}|{{ response }}|", "Score: {{ reward }}", score_range=(0, 5))
    started: list[str] = []  # the judge prompts whose first judgment token was asked for

    class CountingJudge(ScriptedModel):
        def forward(self, ids, **kwargs):
            started.extend(t for t in (self.tok.decode(row) for row in ids) if t.endswith("|") and t.count("|") == 2)
            return super().forward(ids, **kwargs)

    judge = CountingJudge(tok, lambda text: f"Score: {text.count('!')}", max_seq_len=40)
    too_long = ("b" * 30, "x!")  # skipped for length, twice: repeats of a skipped pair are skipped too
    pairs = [("a", "x!"), too_long, ("a", "y!!"), ("a", "x!"), too_long, ("a", "x!"), ("a", "y!!")]
    kwargs = dict(num_judgments=3, max_new_tokens=12, temperature=0.0, top_p=None, use_cache=False, first_pair=5)
    result = judge_scores(judge, tok, config, [p for p, _ in pairs], [r for _, r in pairs], **kwargs)
    assert sorted(started) == ["J a|x!|", "J a|y!!|"]  # not 5 judged pairs x 3 judgments
    scores = result.scores.tolist()
    assert [scores[i] for i in (0, 2, 3, 5, 6)] == [1.0, 2.0, 1.0, 1.0, 2.0] and math.isnan(scores[1])
    assert result.num_skipped == 2 and result.texts[1] == result.texts[4] == [] and result.num_judgments == 15
    assert result.texts[3] == ["Score: 1"] * 3 and result.texts[3] is not result.texts[0]
    alone = [judge_scores(judge, tok, config, [p], [r], **kwargs).texts[0] for p, r in pairs]
    assert result.texts == alone


def test_a_reference_guided_judge_from_a_pipeline_file(tmp_path):
    from self_rewarding_lm_pytorch.config_file import ConfigError, build_reward_config, load_model_section

    judge = """
[judge]
prompt_template = "{{ prompt }} {{ response }}"
reward_regex_template = "Score: {{ reward }}"
score_range = [1, 5]
answer_regex = 'sum (\\d+)'
response_answer = '= *(\\d+)'
"""
    path = tmp_path / "judge.toml"
    path.write_text(judge)
    config = build_reward_config(load_model_section(path, require_model=False)["judge"])
    assert config.is_reference_guided and config.parse("sum 12", response="x = 12") == 5.0
    path.write_text(judge.replace("= *(", "= *(("))  # an unbalanced regex: a config error, not a traceback
    with pytest.raises(ConfigError, match=r"\[judge\].*response_answer is not a valid regex"):
        build_reward_config(load_model_section(path, require_model=False)["judge"])
