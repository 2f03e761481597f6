"""Bad input everywhere (issue #11): property-based tests that malformed input is answered with a typed
error naming the problem, never a crash of another kind, and that well-formed input keeps its invariants."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from self_rewarding_lm_pytorch import ByteTokenizer, ConfigError, RewardConfig, sequence_logprobs
from self_rewarding_lm_pytorch.cli import main
from self_rewarding_lm_pytorch.config_file import load_pipeline_file, parse_pipeline
from self_rewarding_lm_pytorch.self_reward.judge import DEFAULT_REWARD_CONFIG
from self_rewarding_lm_pytorch.self_reward.pairs import best_vs_worst, length_controlled
from self_rewarding_lm_pytorch.trainers.dpo import PreferenceRecordError, normalize_preference
from self_rewarding_lm_pytorch.trainers.sft import to_sft_example

pytestmark = pytest.mark.unit

FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# --- the judge parser -------------------------------------------------------------------------


@FAST
@given(st.text())
def test_the_judge_parser_answers_any_text_with_none_or_a_score_in_range(text):
    score = DEFAULT_REWARD_CONFIG.parse(text)
    assert score is None or (math.isfinite(score) and 0.0 <= score <= 5.0)


@FAST
@given(st.text(), st.integers(0, 5), st.sampled_from(["", ".", "\n", " points", "/5"]))
def test_the_last_score_in_a_judgment_is_the_one_read(prefix, points, suffix):
    assume("score" not in prefix.lower())
    assert DEFAULT_REWARD_CONFIG.parse(f"{prefix} Score: {points}{suffix}") == points


REFERENCE_JUDGE = RewardConfig(
    "{{ prompt }} {{ response }}", "Score: {{ reward }}", score_range=(1, 5), answer_regex=r"sum (?P<answer>\d+)"
)


@FAST
@given(st.text(), st.text())
def test_a_reference_guided_verdict_is_an_end_of_the_range_or_none(judgment, response):
    assert REFERENCE_JUDGE.parse(judgment, response=response) in (1.0, 5.0, None)


@FAST
@given(st.integers(0, 10**6), st.integers(0, 10**6), st.text(alphabet="abc ,.", max_size=20))
def test_a_reference_guided_verdict_is_top_exactly_when_the_answers_agree(worked, answered, filler):
    judgment = f"{filler} sum {worked} {filler} Score: 1"  # the written score is not what counts
    assert REFERENCE_JUDGE.parse(judgment, response=f" {answered}\n") == (5.0 if worked == answered else 1.0)


@FAST
@given(st.text(max_size=40), st.text(max_size=40))
def test_a_rendered_judge_prompt_holds_the_prompt_and_response_verbatim(prompt, response):
    config = RewardConfig("<{{ prompt }}|{{ response }}>", "Score: {{ reward }}", auto_dedent=False)
    assert config.render(prompt=prompt, response=response) == f"<{prompt}|{response}>"


# --- pair policies ----------------------------------------------------------------------------

score_values = st.one_of(st.floats(-10, 10, allow_nan=False), st.just(math.nan), st.sampled_from([0.0, 1.0, 2.0]))


@st.composite
def score_tables(draw):
    prompts, candidates = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    scores = torch.tensor(
        draw(
            st.lists(
                st.lists(score_values, min_size=candidates, max_size=candidates), min_size=prompts, max_size=prompts
            )
        ),
        dtype=torch.float64,
    )
    lengths = torch.tensor(
        draw(
            st.lists(
                st.lists(st.integers(1, 50), min_size=candidates, max_size=candidates),
                min_size=prompts,
                max_size=prompts,
            )
        )
    )
    return scores, lengths


@FAST
@given(score_tables(), st.floats(0, 1), st.floats(0, 3))
def test_pair_policies_pick_valid_distinct_candidates_with_chosen_scored_higher(table, rho, min_margin):
    scores, lengths = table
    for pairs in (
        best_vs_worst(scores, lengths, min_margin=min_margin),
        length_controlled(scores, lengths, rho=rho, min_margin=min_margin),
    ):
        assert len({p.prompt_idx for p in pairs}) == len(pairs)  # at most one pair per prompt
        for p in pairs:
            chosen, rejected = scores[p.prompt_idx, p.chosen_idx], scores[p.prompt_idx, p.rejected_idx]
            assert p.chosen_idx != p.rejected_idx
            assert not (chosen.isnan() or rejected.isnan())
            assert chosen - rejected > 0 and chosen - rejected >= min_margin


@FAST
@given(score_tables())
def test_rho_zero_length_control_keeps_the_plain_rules_scores(table):
    scores, lengths = table
    plain = {p.prompt_idx: p for p in best_vs_worst(scores, lengths)}
    controlled = {p.prompt_idx: p for p in length_controlled(scores, lengths, rho=0.0)}
    assert plain.keys() == controlled.keys()
    for i, p in plain.items():
        q = controlled[i]
        assert scores[i, p.chosen_idx] == scores[i, q.chosen_idx]
        assert scores[i, p.rejected_idx] == scores[i, q.rejected_idx]


# --- tokenizer round trips ------------------------------------------------------------------


@FAST
@given(st.text())
def test_the_byte_tokenizer_round_trips_any_text(text):
    tokenizer = ByteTokenizer()
    ids = tokenizer.encode(text)
    assert all(0 <= i < 256 for i in ids)
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode([tokenizer.bos_id, *ids, tokenizer.eos_id, tokenizer.pad_id]) == text


@FAST
@given(st.lists(st.integers(-5, 400)))
def test_the_byte_tokenizer_decodes_any_ids_without_raising(ids):
    assert isinstance(ByteTokenizer().decode(ids), str)


# --- sequence_logprobs masking ---------------------------------------------------------------


@st.composite
def masked_batches(draw):
    b, n, v = draw(st.integers(1, 3)), draw(st.integers(1, 6)), draw(st.integers(2, 7))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, n, v, generator=g) * 3
    ids = torch.randint(0, v, (b, n), generator=g)
    mask = torch.tensor(draw(st.lists(st.lists(st.booleans(), min_size=n, max_size=n), min_size=b, max_size=b)))
    mask[:, 0] = False  # token 0 has no logit predicting it
    return logits, ids, mask


@FAST
@given(masked_batches(), st.sampled_from(["sum", "mean"]))
def test_sequence_logprobs_count_exactly_the_marked_tokens(batch, reduction):
    logits, ids, mask = batch
    got = sequence_logprobs(logits, ids, mask, reduction=reduction)
    logp = torch.log_softmax(logits.double(), dim=-1)
    for row in range(ids.shape[0]):
        marked = [t for t in range(1, ids.shape[1]) if mask[row, t]]
        total = sum(float(logp[row, t - 1, ids[row, t]]) for t in marked)
        expected = total if reduction == "sum" else total / max(len(marked), 1)
        assert float(got[row]) == pytest.approx(expected, abs=1e-4)
    # the logits of unmarked positions do not matter, however wild
    noisy = logits.clone()
    predicts_unmarked = torch.cat([~mask[:, 1:], torch.ones_like(mask[:, :1])], dim=1)
    noisy[predicts_unmarked] = 1e4
    torch.testing.assert_close(sequence_logprobs(noisy, ids, mask, reduction=reduction), got)


@FAST
@given(masked_batches())
def test_sequence_logprobs_refuse_a_marked_first_token(batch):
    logits, ids, mask = batch
    mask = mask.clone()
    mask[0, 0] = True
    with pytest.raises(ValueError, match="first token"):
        sequence_logprobs(logits, ids, mask)


# --- dataset records -------------------------------------------------------------------------

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-3, 300), st.floats(allow_nan=False), st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8,
)
record_like = st.one_of(
    json_values,
    st.fixed_dictionaries({"prompt": json_values, "response": json_values}),
    st.fixed_dictionaries({"prompt": json_values, "chosen": json_values, "rejected": json_values}),
    st.tuples(json_values, json_values),
)


@FAST
@given(record_like, st.one_of(st.none(), st.integers(1, 16)))
def test_sft_records_are_examples_or_typed_errors(record, max_seq_len):
    try:
        ids, prompt_len = to_sft_example(record, ByteTokenizer(), max_seq_len)
    except (TypeError, ValueError):
        return
    assert 0 <= prompt_len < len(ids)
    assert max_seq_len is None or len(ids) <= max_seq_len


@FAST
@given(record_like)
def test_preference_records_are_triples_or_named_errors(record):
    try:
        fields = normalize_preference(record, 7)
    except PreferenceRecordError as err:
        assert "record 7" in str(err)
        return
    assert len(fields) == 3


# --- the TOML loader --------------------------------------------------------------------------

VALID = {
    "run_dir": "runs/x",
    "seed": 0,
    "tokenizer": "byte",
    "model": {"max_seq_len": 32, "attn_layers": {"dim": 16, "depth": 1, "heads": 2}},
    "accelerate": {"cpu": True},
    "stages": [{"kind": "sft", "train_dataset": "sft.jsonl", "num_train_steps": 2, "batch_size": 2}],
}


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "sft.jsonl").write_text('{"prompt": "1+1=", "response": "2"}\n')
    path = tmp_path / "pipeline.toml"
    path.write_text(text, encoding="utf-8")
    return path


HEAD = 'run_dir = "r"\n'
MODEL = "[model]\nmax_seq_len = 32\n[model.attn_layers]\ndim = 16\ndepth = 1\nheads = 2\n"
STAGE = '[[stages]]\nkind = "sft"\ntrain_dataset = "sft.jsonl"\n'
MALFORMED = [  # (file text, what the message must name)
    (HEAD + MODEL + STAGE + "batch_size = 'eight'\n", "stages[0].batch_size"),  # wrong type
    (HEAD + MODEL + STAGE + "batch_sise = 8\n", "batch_sise"),  # unknown key
    (HEAD + "modle = 1\n" + MODEL + STAGE, "modle"),  # unknown top-level key
    (HEAD + MODEL + '[[stages]\nkind = "sft"\n', "not valid TOML"),  # broken TOML
    (HEAD + MODEL + '[[stages]]\nkind = "sft"\ntrain_dataset = "missing.jsonl"\n', "missing.jsonl"),  # no file
    (HEAD + MODEL + STAGE + 'lr_schedule = "sideways"\n', "lr_schedule"),  # bad enum value
    (HEAD + MODEL + STAGE + "batch_size = -3\n", "batch_size"),  # negative size
    (HEAD + MODEL + STAGE + "num_train_steps = 0\n", "num_train_steps"),
    (HEAD + MODEL + '[[stages]]\nkind = "sfft"\n', "sfft"),  # unknown stage kind
    (HEAD + MODEL + "[[stages]]\nkind = 3\n", "kind"),
    ("run_dir = 5\n" + MODEL + STAGE, "run_dir"),
    (HEAD + "model = 3\n" + STAGE, "[model]"),
    (HEAD + STAGE, "[model]: missing max_seq_len"),
    (HEAD + MODEL.replace("dim = 16", "dim = -16") + STAGE, "[model]"),
    (HEAD + "stages = 3\n" + MODEL, "stages"),
    (HEAD + "stages = [1, 2]\n" + MODEL, "stages[0]"),
    (HEAD + 'tokenizer = "tokenizer.json"\n' + MODEL + STAGE, "tokenizer"),
    (MODEL + STAGE, "run_dir"),
    (
        HEAD + MODEL + '[judge]\nprompt_template = "{{ prompt }}"\nreward_regex_template = "S: {{ reward }}"\n' + STAGE,
        "[judge]",
    ),
    (HEAD + MODEL + STAGE + 'reward = { import = "no_such_module_here:f" }\n', "reward"),
]


@pytest.mark.parametrize(("text", "named"), MALFORMED)
def test_malformed_pipeline_files_are_config_errors_naming_the_place(tmp_path, capsys, text, named):
    path = write(tmp_path, text)
    assert main(["run", str(path), "--check"]) == 2  # the CLI: one line, exit status 2, no traceback
    err = capsys.readouterr().err
    assert err.startswith("srlm run: error: ") and err.count("\n") == 1, err
    assert named in err and str(path) in err, err


def test_a_missing_pipeline_file_is_a_config_error(tmp_path, capsys):
    with pytest.raises(ConfigError, match="no such config file"):
        load_pipeline_file(tmp_path / "nope.toml")
    assert main(["run", str(tmp_path / "nope.toml")]) == 2


toml_values = st.recursive(
    st.one_of(st.booleans(), st.integers(-(2**40), 2**40), st.floats(allow_nan=False), st.text(max_size=10)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=10), inner, max_size=3)),
    max_leaves=6,
)
STAGE_KEYS = [
    "kind",
    "train_dataset",
    "batch_size",
    "num_train_steps",
    "learning_rate",
    "lr_schedule",
    "seed",
    "max_seq_len",
    "valid_dataset",
    "warmup_steps",
    "reward",
    "spin_λ",
    "bogus",
]


@st.composite
def mutated_pipelines(draw):
    """The valid document above with a few keys replaced, added or removed, anywhere in it."""
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in VALID.items()}
    raw["stages"] = [dict(s) for s in VALID["stages"]]
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.sampled_from(["top", "stage", "model", "remove"]))
        if where == "top":
            raw[draw(st.sampled_from([*VALID, "judge", "init_checkpoint", "extra"]))] = draw(toml_values)
        elif where == "stage" and isinstance(raw.get("stages"), list) and raw["stages"]:
            stage = raw["stages"][0]
            if isinstance(stage, dict):
                stage[draw(st.sampled_from(STAGE_KEYS))] = draw(toml_values)
        elif where == "model" and isinstance(raw.get("model"), dict):
            raw["model"][draw(st.sampled_from(["max_seq_len", "attn_layers", "num_tokens"]))] = draw(toml_values)
        elif raw:
            raw.pop(draw(st.sampled_from(sorted(raw))))
    return raw


@FAST
@given(mutated_pipelines())
def test_any_mutated_pipeline_document_validates_or_is_a_config_error(tmp_path_factory, raw):
    from self_rewarding_lm_pytorch.config_file import build_reward_config, build_stage_configs

    folder = tmp_path_factory.mktemp("toml")
    write(folder, "")
    try:
        pipeline = parse_pipeline(raw, path=folder / "pipeline.toml")
        build_stage_configs(pipeline)
        build_reward_config(pipeline.judge)
    except ConfigError as err:
        assert str(err)


@FAST
@given(st.text(max_size=200))
def test_arbitrary_text_as_a_pipeline_file_is_a_config_error_or_valid(tmp_path_factory, text):
    folder = tmp_path_factory.mktemp("toml")
    path = write(folder, text)
    try:
        load_pipeline_file(path)
    except ConfigError as err:
        assert str(path) in str(err)
