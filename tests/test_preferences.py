import functools
import json
import math

import pytest
from conftest import tiny_lm
from test_judge import ScriptedModel  # tests/ is on sys.path (rootdir conftest, no package)

from self_rewarding_lm_pytorch.core.files import read_jsonl
from self_rewarding_lm_pytorch.core.tokenizer import ByteTokenizer
from self_rewarding_lm_pytorch.self_reward.judge import DEFAULT_REWARD_CONFIG, RewardConfig
from self_rewarding_lm_pytorch.self_reward.pairs import length_controlled
from self_rewarding_lm_pytorch.self_reward.preferences import BudgetError, generate_preferences, resolve_budgets

TOK = ByteTokenizer()
SCORE_OF = {"A": 1, "BB": 2, "CCC": 3, "DDDD": 4}
CONFIG = RewardConfig("J {{ prompt }}{{ response }}|", "Score: {{ reward }}", score_range=(0, 5))


def script(prefix: str):
    """Prompts end with '|'. A candidate is one of A, BB, CCC, DDDD (drawn uniformly); the judge
    prompt 'J <prompt>|<response>|' is answered 'Score: <1..4>' by letter, except: prompt 'tie' is
    always scored 3, and prompt 'garbage' gets an answer with no score."""
    if not prefix.startswith("J "):
        return list(SCORE_OF)
    prompt, response = prefix[2:-1].split("|", 1)
    if prompt == "garbage":
        return "no idea, sorry"
    return "Score: 3" if prompt == "tie" else f"Score: {SCORE_OF[response]}"


def run(prompts, tmp_path, **kwargs):
    model = kwargs.pop("model", None) or ScriptedModel(TOK, script, max_seq_len=64)
    args = dict(reward_config=CONFIG, out_dir=tmp_path, seed=0, use_cache=False, progress=False) | kwargs
    return generate_preferences(model, TOK, prompts, **args)


def expected_pairs(records):
    """From the candidates actually sampled: best letter vs worst letter, when they differ."""
    out = set()
    for rec in records:
        if rec["prompt"] in ("tie|", "garbage|") or not rec["candidates"]:
            continue
        responses = [c["response"] for c in rec["candidates"]]
        best, worst = max(responses, key=SCORE_OF.get), min(responses, key=SCORE_OF.get)
        if best != worst:
            out.add((rec["prompt"], best, worst))
    return out


@pytest.mark.stage
def test_scripted_judge_gives_exactly_the_expected_pairs(tmp_path):
    prompts = ["p0|", "tie|", "p1|", "garbage|", "p2|", "p3|"]
    result = run(prompts, tmp_path, chunk_size=4)
    records = read_jsonl(tmp_path / "candidates.jsonl")
    assert [r["prompt"] for r in records] == prompts
    for rec in records:
        assert len(rec["candidates"]) == 4
        for cand in rec["candidates"]:
            assert cand["response"] in SCORE_OF and len(cand["judgments"]) == 3
            if rec["prompt"] == "garbage|":
                assert (
                    cand["judgments"] == ["no idea, sorry"] * 3
                    and cand["parsed"] == [None] * 3
                    and cand["score"] is None
                )
            else:
                want = 3.0 if rec["prompt"] == "tie|" else float(SCORE_OF[cand["response"]])
                assert cand["parsed"] == [want] * 3 and cand["score"] == want
    got = {(r["prompt"], r["chosen"], r["rejected"]) for r in result.records}
    assert got == expected_pairs(records) and len(got) >= 3  # seed 0 draws distinct letters
    for r in result.records:
        assert r["chosen_score"] == SCORE_OF[r["chosen"]] and r["rejected_score"] == SCORE_OF[r["rejected"]]
    assert read_jsonl(tmp_path / "pairs.jsonl") == result.records
    stats = result.stats
    assert stats["stop_reason"] == "prompts_exhausted" and stats["num_pairs"] == len(got)
    assert stats["prompts_dropped"]["tied_scores"] == 1 and stats["prompts_dropped"]["fewer_than_2_valid_scores"] == 1
    assert stats["judgments"] == 6 * 4 * 3 and stats["parse_failures"] == 4 * 3
    assert stats["parse_failure_rate"] == pytest.approx(12 / 72)
    assert stats["mean_chosen_score"] > stats["mean_rejected_score"]
    assert stats["mean_chosen_length"] == pytest.approx(sum(len(r["chosen"]) for r in result.records) / len(got))


@pytest.mark.stage
def test_garbage_judge_gives_zero_pairs_without_crashing(tmp_path):
    prompts = ["garbage|"] * 5
    with pytest.warns(UserWarning, match="no preference pairs"):
        result = run(prompts, tmp_path, num_pairs=3, chunk_size=2)
    assert result.records == [] and result.stats["num_pairs"] == 0
    assert result.stats["stop_reason"] == "prompts_exhausted"
    assert result.stats["prompts_dropped"] == {"fewer_than_2_valid_scores": 5}
    assert result.stats["parse_failure_rate"] == 1.0
    assert read_jsonl(tmp_path / "pairs.jsonl") == [] and len(read_jsonl(tmp_path / "candidates.jsonl")) == 5


@pytest.mark.stage
def test_empty_candidates_are_not_judged_nor_paired(tmp_path):
    """Candidates '', 'A' or 'DDDD': an empty one (EOS at once) gets no judgments and no score."""
    model = ScriptedModel(
        TOK, lambda prefix: script(prefix) if prefix.startswith("J ") else ["", "A", "DDDD"], max_seq_len=64
    )
    result = run([f"p{i}|" for i in range(4)], tmp_path, model=model)
    cands = [c for rec in read_jsonl(tmp_path / "candidates.jsonl") for c in rec["candidates"]]
    empty = [c for c in cands if c["response"] == ""]
    assert empty and all(c["judgments"] == [] and c["score"] is None for c in empty)
    assert result.stats["candidates_empty"] == len(empty)
    assert result.stats["judgments"] == 3 * (len(cands) - len(empty))
    assert result.records and all(r["chosen"] == "DDDD" and r["rejected"] == "A" for r in result.records)


@pytest.mark.stage
def test_stops_when_enough_pairs(tmp_path):
    result = run([f"p{i}|" for i in range(20)], tmp_path, num_pairs=2, chunk_size=1)
    assert result.stats["stop_reason"] == "enough_pairs" and len(result.records) == 2
    assert result.stats["prompts_processed"] < 20  # it stopped early


@pytest.mark.stage
def test_more_passes_only_when_asked(tmp_path):
    one = run(["p0|", "p1|"], tmp_path / "one", num_pairs=10)
    two = run(["p0|", "p1|"], tmp_path / "two", num_pairs=10, max_passes=2)
    assert one.stats["prompts_processed"] == 2 and two.stats["prompts_processed"] == 4
    assert {r["pass"] for r in two.records} <= {0, 1} and len(two.records) > len(one.records)


@pytest.mark.stage
def test_external_reward_fn_needs_no_judge(tmp_path):
    """Reward = response length: chosen is the longest letter string sampled, rejected the shortest."""

    def no_judging(prefix):
        assert not prefix.startswith("J "), "the model must not be asked to judge"
        return list(SCORE_OF)

    model = ScriptedModel(TOK, no_judging, max_seq_len=16)  # too small for any judge template
    result = run(["p0|", "p1|", "p2|"], tmp_path, model=model, reward_fn=lambda ps, rs: [float(len(r)) for r in rs])
    records = read_jsonl(tmp_path / "candidates.jsonl")
    assert {(r["prompt"], r["chosen"], r["rejected"]) for r in result.records} == expected_pairs(records)
    assert result.stats["judgments"] == 0 and result.stats["parse_failure_rate"] is None
    with pytest.raises(ValueError, match="reward_fn returned 1 scores"):
        run(["p0|"], tmp_path, model=model, reward_fn=lambda ps, rs: [1.0])


@pytest.mark.stage
def test_separate_judge_model(tmp_path):
    policy = ScriptedModel(TOK, lambda prefix: list(SCORE_OF), max_seq_len=64)
    judge = ScriptedModel(TOK, script, max_seq_len=64)
    result = run(["p0|", "p1|"], tmp_path, model=policy, judge_model=judge)
    records = read_jsonl(tmp_path / "candidates.jsonl")
    assert {(r["prompt"], r["chosen"], r["rejected"]) for r in result.records} == expected_pairs(records)
    assert all(c["judgments"] for rec in records for c in rec["candidates"])


@pytest.mark.stage
def test_pair_policy_is_pluggable(tmp_path):
    """rho = 1: every candidate is in both tiers, so chosen = shortest and rejected = longest; that
    pair always scores chosen below rejected here, so the policy drops every prompt."""
    with pytest.warns(UserWarning, match="no preference pairs"):
        result = run(["p0|", "p1|"], tmp_path, pair_policy=functools.partial(length_controlled, rho=1.0))
    assert result.records == []
    assert (
        result.stats["prompts_dropped"].get("rejected_by_pair_policy", 0)
        + result.stats["prompts_dropped"].get("tied_scores", 0)
        == 2
    )

    def bad_policy(scores, lengths):
        return [(0, 1, 1)]

    with pytest.raises(ValueError, match="invalid pair"):
        run(["p0|"], tmp_path, pair_policy=bad_policy)


@pytest.mark.stage
def test_too_long_and_empty_prompts_are_skipped_and_counted(tmp_path):
    """Explicit budgets 20 + 10 with max_seq_len 64 and a 3-token template leave prompts 64-3-30 = 31 tokens."""
    prompts = ["p0|", "x" * 40 + "|", "", 12345, "p1|"]
    with pytest.warns(UserWarning, match="skipping 3 of 5 prompts"):
        result = run(prompts, tmp_path, max_new_tokens=20, judge_max_new_tokens=10)
    assert result.stats["prompts_dropped"].get("too_long") == 1
    assert result.stats["prompts_dropped"].get("empty") == 1 and result.stats["prompts_dropped"].get("invalid") == 1
    assert result.stats["budgets"] == {"max_prompt_len": 31, "max_new_tokens": 20, "judge_max_new_tokens": 10}
    assert {r["prompt"] for r in read_jsonl(tmp_path / "candidates.jsonl")} == {"p0|", "p1|"}


@pytest.mark.unit
def test_impossible_budget_fails_before_any_generation(tmp_path):
    model = ScriptedModel(TOK, script, max_seq_len=64)
    with pytest.raises(BudgetError, match=r"judge template 3 \+ prompt \(>= 1\) \+ candidate 40 \+ judgment 30 = 74"):
        run(["p0|"], tmp_path, model=model, max_new_tokens=40, judge_max_new_tokens=30)
    assert model.calls == 0


@pytest.mark.unit
def test_default_judge_prompt_too_long_for_a_tiny_context(tiny_model, tmp_path):
    """The reference package's failure: a judge prompt longer than the model's context. Here it is an
    error naming the lengths (the default template is ~300 byte tokens; tiny_model has 64)."""
    with pytest.raises(BudgetError, match="judge max_seq_len of 64"):
        generate_preferences(tiny_model, TOK, ["hi"], out_dir=tmp_path, progress=False)


@pytest.mark.unit
@pytest.mark.parametrize("max_len", [16, 64, 300, 512, 2048])
@pytest.mark.parametrize("template_len", [3, 100, 280])
@pytest.mark.parametrize("prompt_len", [1, 10, 200, 5000])
def test_derived_budgets_always_fit(max_len, template_len, prompt_len):
    try:
        b = resolve_budgets([prompt_len, 2], template_len=template_len, policy_max_len=max_len, judge_max_len=max_len)
    except BudgetError as e:
        assert template_len + 3 > max_len or "cannot fit" in str(e)
        assert template_len + 3 > max_len  # only a template with no room for 1+1+1 tokens fails
        return
    assert b.max_new_tokens >= 1 and b.judge_max_new_tokens >= 1 and b.max_prompt_len >= 1
    assert template_len + b.max_prompt_len + b.max_new_tokens + b.judge_max_new_tokens <= max_len
    assert b.max_prompt_len + b.max_new_tokens <= max_len


@pytest.mark.unit
def test_budget_hand_values():
    """max_seq_len 64, template 3, prompts up to 6: room 61, prompt cap min(6, 61 // 3) = 6,
    judge gets (64 - 3 - 6) // 2 = 27, candidate 55 - 27 = 28, prompts may have 64 - 3 - 28 - 27 = 6."""
    b = resolve_budgets([4, 6], template_len=3, policy_max_len=64, judge_max_len=64)
    assert (b.max_prompt_len, b.max_new_tokens, b.judge_max_new_tokens) == (6, 28, 27)
    one = resolve_budgets([4, 6], template_len=3, policy_max_len=64, judge_max_len=64, max_new_tokens=10)
    assert (one.max_new_tokens, one.judge_max_new_tokens) == (10, 45)
    ext = resolve_budgets([6], template_len=3, policy_max_len=64, judge_max_len=None, judged=False)
    assert (ext.max_prompt_len, ext.max_new_tokens, ext.judge_max_new_tokens) == (6, 58, 0)
    with pytest.raises(BudgetError, match="no max_seq_len"):
        resolve_budgets([6], template_len=3, policy_max_len=None, judge_max_len=None)


@pytest.mark.stage
def test_resume_after_a_crash_matches_an_uninterrupted_run(tmp_path):
    prompts = [f"p{i}|" for i in range(5)]
    full = run(prompts, tmp_path / "full", chunk_size=2)
    calls = []

    def crashing_policy(scores, lengths):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("injected crash in the second chunk")
        return full_policy(scores, lengths)

    from self_rewarding_lm_pytorch.self_reward.pairs import best_vs_worst as full_policy

    with pytest.raises(RuntimeError, match="injected"):
        run(prompts, tmp_path / "crash", chunk_size=2, pair_policy=crashing_policy)
    assert len(read_jsonl(tmp_path / "crash" / "candidates.jsonl")) == 2  # the first chunk survived
    with open(tmp_path / "crash" / "candidates.jsonl", "a") as f:
        f.write('{"partial li')  # a torn last line, as a kill mid-write leaves
    resumed = run(prompts, tmp_path / "crash", chunk_size=2, resume=True)
    assert resumed.records == full.records
    assert read_jsonl(tmp_path / "crash" / "candidates.jsonl") == read_jsonl(tmp_path / "full" / "candidates.jsonl")
    assert resumed.stats == full.stats
    with pytest.raises(ValueError, match="different prompts"):
        run([f"q{i}|" for i in range(5)], tmp_path / "crash", chunk_size=2, resume=True)


@pytest.mark.stage
def test_real_tiny_model_with_default_judge_runs_to_the_end(tmp_path):
    """An untrained byte model with the default judge (budgets derived from max_seq_len 512): random
    bytes never parse, so no pairs, but every candidate and judgment is written and it terminates."""
    model = tiny_lm(max_seq_len=512, dim=16)
    with pytest.warns(UserWarning):
        result = generate_preferences(
            model,
            TOK,
            ["Say hi.", "Name a colour."],
            num_candidates=2,
            num_judgments=1,
            num_pairs=5,
            out_dir=tmp_path,
            seed=0,
            progress=False,
        )
    budgets = result.stats["budgets"]
    template = len(TOK.encode(DEFAULT_REWARD_CONFIG.render(prompt="", response="")))
    assert template + budgets["max_prompt_len"] + budgets["max_new_tokens"] + budgets["judge_max_new_tokens"] <= 512
    records = read_jsonl(tmp_path / "candidates.jsonl")
    assert len(records) == 2 and all(len(c["judgments"]) == 1 for r in records for c in r["candidates"])
    assert result.stats["judge_skipped"] == 0  # every judge prompt fit
    json.dumps(result.stats)
    assert math.isfinite(result.stats["parse_failure_rate"])
