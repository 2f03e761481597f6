"""Prompt self-generation: exact filters, sandboxed templates, resume, the stage in a pipeline and in TOML."""

import json
from pathlib import Path

import jinja2
import pytest
from conftest import tiny_lm
from hypothesis import given
from hypothesis import strategies as st

from self_rewarding_lm_pytorch import (
    ByteTokenizer,
    ExternalRewardDPOConfig,
    PromptFilter,
    PromptGenerationConfig,
    SelfRewardingTrainer,
    generate_prompts,
    ngram_overlap,
    render_few_shot,
)
from self_rewarding_lm_pytorch.self_reward.prompt_filters import NGramIndex, ngrams

TOK = ByteTokenizer()
SHORT = "{% for e in examples %}{{ e }};{% endfor %}"
SEEDS = [f"{a}+{b}=" for a in range(1, 7) for b in range(1, 7)]


@pytest.mark.unit
def test_ngram_overlap_by_hand():
    # words, n=2: A = {ab, bc, cd}, B = {bc, cd, de}: 2 of A's 3 bigrams are in B
    assert ngram_overlap("a b c d", "b c d e", 2) == 2 / 3
    # characters, n=3: {12+, 2+3, +34, 34=} vs {12+, 2+3, +35, 35=}: 2 of 4
    assert ngram_overlap("12+34=", "12+35=", 3, "char") == 0.5
    assert ngram_overlap("2+34=", "12+34=", 3, "char") == 1.0  # a copy inside a longer text
    assert ngrams("ab", 3, "char") == {("a", "b")}  # shorter than n: one n-gram of its own
    assert ngram_overlap("", "abc", 2) == 0.0


@pytest.mark.unit
def test_filter_decisions_in_order():
    keep = PromptFilter(
        seed=["12+34="],
        avoid=["90+12="],
        min_length=3,
        max_length=8,
        is_valid=lambda p: "+" in p,
        max_overlap=0.75,
        ngram_size=3,
        ngram_unit="char",
    )
    decisions = [
        keep.reason_to_drop("5+6=", finished=False),
        keep.reason_to_drop("1="),
        keep.reason_to_drop("123456+789="),
        keep.reason_to_drop("hello"),
        keep.reason_to_drop("12+34="),  # overlap 1.0 with the seed
        keep.reason_to_drop("90+12="),
        keep.reason_to_drop("56+78="),
        keep.reason_to_drop("56+79="),  # {56+, 6+7, +79, 79=}: 2/4 = 0.5 < 0.75: kept
        keep.reason_to_drop("56+7="),  # {56+, 6+7, +7=}: 2/3 shared with 56+78= < 0.75: kept
        keep.reason_to_drop("6+78="),  # {6+7, +78, 78=}: 3/3 inside 56+78=
    ]
    assert decisions == [
        "unfinished",
        "too_short",
        "too_long",
        "failed_parse_check",
        "near_duplicate_of_seed",
        "near_duplicate_of_avoided",
        None,
        None,
        None,
        "near_duplicate_of_generated",
    ]
    with pytest.raises(ValueError, match="ngram_unit"):
        PromptFilter(seed=[], ngram_unit="token")
    with pytest.raises(ValueError, match="max_overlap"):
        PromptFilter(seed=[], max_overlap=0.0)


@pytest.mark.unit
@given(st.lists(st.text(alphabet="ab +", max_size=8), max_size=6), st.text(alphabet="ab +", max_size=8))
def test_index_max_overlap_is_the_largest_pairwise_overlap(texts, candidate):
    index = NGramIndex(2, "char")
    for text in texts:
        index.add(text)
    expected = max((ngram_overlap(candidate, t, 2, "char") for t in texts), default=0.0)
    assert index.max_overlap(candidate) == pytest.approx(expected)


@pytest.mark.unit
def test_templates_render_in_the_sandbox():
    assert render_few_shot(SHORT, ["1+1=", "2+2="]) == "1+1=;2+2=;"
    default = render_few_shot(PromptGenerationConfig(["a"], 1).template, ["x", "y"])
    assert default == "Come up with a new task like these.\nTask 1: x\nTask 2: y\nTask 3:"
    with pytest.raises((jinja2.exceptions.SecurityError, jinja2.UndefinedError)):
        render_few_shot("{{ examples.__class__.__mro__ }}", ["x"])
    with pytest.raises(jinja2.TemplateSyntaxError):
        PromptGenerationConfig(["a"], 1, template="{% for %}")


@pytest.fixture(scope="module")
def prompt_writer():
    """A tiny model that has learned to write 'a+b=' prompts after a few shots of them."""
    import random

    from self_rewarding_lm_pytorch import SFTTrainer

    model = tiny_lm(max_seq_len=48)
    rng = random.Random(0)
    data = [
        {
            "prompt": render_few_shot(SHORT, rng.sample(SEEDS, 2)),
            "response": f"{rng.randint(1, 9)}+{rng.randint(1, 9)}=",
        }
        for _ in range(300)
    ]
    SFTTrainer(
        model,
        data,
        tokenizer=TOK,
        num_train_steps=120,
        batch_size=16,
        learning_rate=3e-3,
        progress=False,
        accelerate_kwargs=dict(cpu=True),
    )()
    return model


def _generate(model, out_dir, **kwargs):
    return generate_prompts(
        model,
        TOK,
        SEEDS,
        num_prompts=12,
        num_shots=2,
        template=SHORT,
        max_new_tokens=8,
        stop=None,
        batch_size=6,
        prompt_filter=PromptFilter(
            seed=SEEDS, is_valid=lambda p: p.endswith("="), max_overlap=1.0, ngram_size=3, ngram_unit="char"
        ),
        out_dir=out_dir,
        seed=5,
        **kwargs,
    )


@pytest.mark.stage
def test_generation_keeps_new_valid_prompts_and_counts_the_rest(prompt_writer, tmp_path):
    result = _generate(prompt_writer, tmp_path)
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats == result.stats
    assert 0 < stats["kept"] == len(result.prompts) <= 12
    assert stats["generated"] == stats["kept"] + sum(stats["dropped"].values())
    assert not set(result.prompts) & set(SEEDS) and len(set(result.prompts)) == len(result.prompts)
    assert all(p.endswith("=") for p in result.prompts)
    assert [json.loads(line)["prompt"] for line in (tmp_path / "prompts.jsonl").open()] == result.prompts


@pytest.mark.stage
def test_a_resumed_run_writes_identical_files(prompt_writer, tmp_path, monkeypatch):
    _generate(prompt_writer, tmp_path / "whole")
    import self_rewarding_lm_pytorch.core.sampling as sampling

    real, calls = sampling.sample, {"n": 0}

    def crash_on_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(sampling, "sample", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        _generate(prompt_writer, tmp_path / "resumed")
    assert len((tmp_path / "resumed" / "candidates.jsonl").read_text().splitlines()) == 2
    monkeypatch.setattr(sampling, "sample", real)
    _generate(prompt_writer, tmp_path / "resumed", resume=True)
    for name in ("candidates.jsonl", "prompts.jsonl", "stats.json"):
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "resumed" / name).read_bytes(), name


@pytest.mark.e2e
def test_a_later_stage_reads_the_generated_prompts_via_previous(prompt_writer, tmp_path):
    seen = []

    def reward(prompts, responses):
        seen.extend(prompts)
        return [float(len(r)) for r in responses]

    stages = [
        PromptGenerationConfig(
            SEEDS,
            6,
            num_shots=2,
            template=SHORT,
            max_new_tokens=8,
            stop=None,
            batch_size=6,
            parse_check=lambda p: p.endswith("="),
            max_overlap=1.0,
            ngram_unit="char",
        ),
        ExternalRewardDPOConfig(reward, "@previous", 4, num_train_steps=1, batch_size=2, max_new_tokens=4),
    ]
    trainer = SelfRewardingTrainer(
        prompt_writer,
        stages,
        tokenizer=TOK,
        checkpoints_folder=tmp_path / "run",
        seed=0,
        accelerate_kwargs=dict(cpu=True),
        progress=False,
    )
    summaries = trainer()
    generated = [json.loads(line)["prompt"] for line in (tmp_path / "run/01-prompt-generation/prompts.jsonl").open()]
    assert summaries[0]["num_prompts"] == len(generated) > 0
    candidates = tmp_path / "run/02-external-reward-dpo/candidates.jsonl"
    asked = [json.loads(line)["prompt"] for line in candidates.open()]
    assert asked and set(asked) <= set(generated) and set(seen) <= set(generated)
    with pytest.raises(ValueError, match="no prompt-generation stage ran before"):
        SelfRewardingTrainer(
            prompt_writer,
            [stages[1]],
            tokenizer=TOK,
            checkpoints_folder=tmp_path / "alone",
            accelerate_kwargs=dict(cpu=True),
            progress=False,
        )()


@pytest.mark.unit
def test_toml_round_trip(tmp_path):
    from self_rewarding_lm_pytorch.config_file import build_stage_configs, load_pipeline_file

    (tmp_path / "seed.jsonl").write_text("".join(json.dumps({"prompt": s}) + "\n" for s in SEEDS))
    (tmp_path / "p.toml").write_text(
        'run_dir = "runs/x"\n[model]\nmax_seq_len = 32\n[model.attn_layers]\ndim = 16\ndepth = 1\nheads = 2\n'
        '[[stages]]\nkind = "prompt-generation"\nseed_prompts = "seed.jsonl"\nnum_prompts = 5\nnum_shots = 2\n'
        'max_overlap = 0.9\nngram_unit = "char"\n'
        'parse_check = { import = "self_rewarding_lm_pytorch.demo.task:is_addition_prompt" }\n'
        '[[stages]]\nkind = "external-reward-dpo"\n'
        'reward_model = { import = "self_rewarding_lm_pytorch.demo.task:consistency_reward" }\n'
        'prompt_dataset = "@previous"\nnum_generated_preference_pairs = 3\nnum_epochs = 2\nnum_train_steps = 10\n'
    )
    gen, dpo = build_stage_configs(load_pipeline_file(tmp_path / "p.toml"))
    assert isinstance(gen, PromptGenerationConfig)
    assert gen.seed_prompts == str(tmp_path / "seed.jsonl") and gen.num_shots == 2 and gen.max_overlap == 0.9
    assert gen.parse_check("1+2=") and not gen.parse_check("hello")
    assert dpo.prompt_dataset == "@previous" and dpo.num_epochs == 2 and dpo.num_train_steps == 10
    assert Path(gen.seed_prompts).is_file()
    assert dpo.reward_model(["1+1="] * 3, ["2", "2", "3"]) == [2 / 3, 2 / 3, 1 / 3]
