"""SamplingConfig: one validator, one rule for stage configs that also take loose sampling fields."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from self_rewarding_lm_pytorch import (
    ExternalRewardDPOConfig,
    GenerationConfig,
    JudgeSettings,
    PPOStageConfig,
    SamplingConfig,
    SamplingConflictError,
    SelfPlayConfig,
    SelfRewardDPOConfig,
)

pytestmark = pytest.mark.unit

BAD_VALUES = {
    "temperature": st.one_of(
        st.floats(max_value=-1e-9, allow_nan=False), st.just(math.inf), st.just(math.nan), st.integers(max_value=-1)
    ),
    "top_k": st.integers(max_value=0),
    "top_p": st.one_of(st.floats(max_value=0.0), st.floats(min_value=1.0, exclude_min=True), st.just(math.nan)),
    "min_p": st.one_of(st.floats(max_value=-1e-9), st.floats(min_value=1.0), st.just(math.nan)),
    "max_new_tokens": st.integers(max_value=0),
}
BAD_TYPES = st.one_of(st.text(max_size=3), st.booleans(), st.lists(st.integers(), max_size=2))


@pytest.mark.parametrize("name", sorted(BAD_VALUES))
@given(data=st.data())
def test_bad_values_are_value_errors_naming_the_setting(name, data):
    value = data.draw(BAD_VALUES[name])
    with pytest.raises(ValueError, match=name):
        SamplingConfig(**{name: value})
    with pytest.raises(ValueError, match=name):  # the same validator behind every config that samples
        GenerationConfig(**{name: value})


@pytest.mark.parametrize("name", sorted(BAD_VALUES))
@given(value=BAD_TYPES)
def test_wrong_types_are_type_errors_naming_the_setting(name, value):
    with pytest.raises(TypeError, match=name):
        SamplingConfig(**{name: value})


@given(
    temperature=st.floats(min_value=0, max_value=10),
    top_k=st.none() | st.integers(min_value=1, max_value=1000),
    top_p=st.none() | st.floats(min_value=0.0, max_value=1.0, exclude_min=True),
    min_p=st.none() | st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
    max_new_tokens=st.none() | st.integers(min_value=1, max_value=10_000),
)
def test_good_values_are_kept(temperature, top_k, top_p, min_p, max_new_tokens):
    config = SamplingConfig(temperature, top_k, top_p, min_p, max_new_tokens)
    assert config.sampling_kwargs() == dict(
        temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, max_new_tokens=max_new_tokens
    )


def test_ints_are_stored_as_floats_and_the_config_is_frozen():
    config = SamplingConfig(temperature=1, top_p=1)
    assert isinstance(config.temperature, float) and isinstance(config.top_p, float)
    with pytest.raises(AttributeError):
        config.temperature = 0.5  # type: ignore[misc]


def test_judge_settings_check_num_judgments():
    assert JudgeSettings().sampling == SamplingConfig(temperature=0.7, top_p=0.9)
    with pytest.raises(ValueError, match="num_judgments"):
        JudgeSettings(num_judgments=0)
    with pytest.raises(TypeError, match="SamplingConfig"):
        JudgeSettings(sampling={"temperature": 1.0})


# --- stage configs: the seed names and sampling= ---


def score(prompts, responses):
    return [0.0] * len(responses)


def test_seed_names_map_to_the_sampling_config():
    stage = SelfRewardDPOConfig(["p"], 2, gen_temperature=0.5, gen_top_p=0.8, max_new_tokens=7, eval_temperature=0.2)
    assert stage.sampling_config == SamplingConfig(temperature=0.5, top_p=0.8, max_new_tokens=7)
    assert stage.judge_settings == JudgeSettings(SamplingConfig(temperature=0.2, top_p=0.9), num_judgments=3)
    stage = SelfRewardDPOConfig(["p"], 2, num_sampled_reward_responses=5, judge_max_new_tokens=9, eval_top_p=None)
    assert stage.judge_settings == JudgeSettings(SamplingConfig(temperature=0.7, max_new_tokens=9), 5)
    assert SelfPlayConfig(["x"], gen_temperature=1.0).sampling_config == SamplingConfig(temperature=1.0, top_p=0.9)
    # PPO samples unfiltered (its ratio and KL are those of softmax(logits / T)): no top_k/top_p/min_p
    ppo = PPOStageConfig(["p"], temperature=0.9, max_new_tokens=8, judge_temperature=0.3)
    assert ppo.sampling_config == SamplingConfig(temperature=0.9, max_new_tokens=8)
    assert ppo.judge_settings == JudgeSettings(SamplingConfig(temperature=0.3, top_p=0.9, max_new_tokens=64), 3)


def test_sampling_is_the_whole_setting_and_agreeing_loose_fields_are_fine():
    sampling = SamplingConfig(temperature=0.3, top_k=4)
    stage = ExternalRewardDPOConfig(score, ["p"], 2, sampling=sampling)
    assert stage.sampling_config is sampling  # top_p is None: sampling= is complete, not merged
    assert ExternalRewardDPOConfig(score, ["p"], 2, sampling=sampling, gen_temperature=0.3).sampling_config is sampling
    judge = SamplingConfig(temperature=0.0, max_new_tokens=5)
    assert SelfRewardDPOConfig(["p"], 2, judge_sampling=judge).judge_settings.sampling is judge


@pytest.mark.parametrize(
    "build",
    [
        lambda s: ExternalRewardDPOConfig(score, ["p"], 2, sampling=s, gen_temperature=0.9),
        lambda s: SelfRewardDPOConfig(["p"], 2, sampling=s, max_new_tokens=3),
        lambda s: SelfRewardDPOConfig(["p"], 2, judge_sampling=s, eval_top_p=0.5),
        lambda s: SelfPlayConfig(["x"], sampling=s, gen_top_p=0.5),
        lambda s: PPOStageConfig(["p"], sampling=s, top_k=3),
        lambda s: PPOStageConfig(["p"], judge_sampling=s, judge_temperature=0.1),
    ],
)
def test_disagreeing_loose_field_is_a_conflict_error(build):
    with pytest.raises(SamplingConflictError, match="disagrees with sampling"):
        build(SamplingConfig(temperature=0.3, top_p=0.95, max_new_tokens=6))


def test_a_config_file_table_becomes_a_sampling_config():
    stage = SelfPlayConfig(["x"], sampling={"temperature": 0.2, "top_k": 3})
    assert stage.sampling == SamplingConfig(temperature=0.2, top_k=3) == stage.sampling_config
    with pytest.raises(TypeError, match="unknown SamplingConfig field"):
        SelfPlayConfig(["x"], sampling={"temprature": 0.2})
    with pytest.raises(ValueError, match="top_p"):
        SelfPlayConfig(["x"], gen_top_p=1.5)


def test_spin_and_ppo_refuse_what_they_cannot_honour():
    with pytest.raises(ValueError, match="max_seq_len"):
        SelfPlayConfig(["x"], sampling=SamplingConfig(max_new_tokens=4))
    with pytest.raises(ValueError, match="max_new_tokens must be set"):
        PPOStageConfig(["p"], sampling=SamplingConfig(temperature=1.0))


def test_vocabulary_example_runs(tmp_path, monkeypatch, capsys):
    """examples/vocabulary.py, the guide's code, runs as written."""
    import runpy
    from pathlib import Path

    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(Path(__file__).resolve().parent.parent / "examples" / "vocabulary.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "conflict: SelfRewardDPOConfig: gen_temperature=0.5 disagrees with sampling.temperature=1.0" in out
    assert list(tmp_path.iterdir()) == []
