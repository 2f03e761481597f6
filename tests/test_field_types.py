"""Config field types are checked by beartype through one helper (`core.field_types`): any value of
the wrong type is a `FieldTypeError` naming the config and the field; ints are fine floats and are
stored as floats; a bool is never an int."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from self_rewarding_lm_pytorch import FieldTypeError, PPOConfig, SamplingConfig, SFTConfig
from self_rewarding_lm_pytorch.core.field_types import check_value_type
from self_rewarding_lm_pytorch.training.config import TrainConfig

pytestmark = pytest.mark.unit

any_value = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.floats(-5, 5, allow_nan=False),
    st.text(max_size=3),
    st.lists(st.integers(), max_size=2),
)


def expected_ok(value, hint) -> bool:
    """The rule written out by hand, per hint: what the beartype-backed helper must agree with."""
    is_int = type(value) is int
    return {
        int: is_int,
        float: is_int or type(value) is float,
        bool: type(value) is bool,
        str: type(value) is str,
        int | None: value is None or is_int,
        float | None: value is None or is_int or type(value) is float,
    }[hint]


@settings(max_examples=200, deadline=None)
@given(any_value, st.sampled_from([int, float, bool, str, int | None, float | None]))
def test_a_value_passes_exactly_when_it_satisfies_the_hint(value, hint):
    if expected_ok(value, hint):
        checked = check_value_type("x", value, hint, where="C")
        assert checked == value
        if type(value) is int and hint in (float, float | None):
            assert type(checked) is float  # 1 and 1.0 are the same learning rate, stored alike
    else:
        with pytest.raises(FieldTypeError, match=r"^C: x must be .*, got "):
            check_value_type("x", value, hint, where="C")


@pytest.mark.parametrize(
    "build, field",
    [
        (lambda: TrainConfig(batch_size=True), "batch_size"),
        (lambda: TrainConfig(fsdp=1), "fsdp"),
        (lambda: TrainConfig(num_train_steps=2.0), "num_train_steps"),
        (lambda: SFTConfig(train_dataset=[], learning_rate="1e-4"), "learning_rate"),
        (lambda: SamplingConfig(top_k=1.5), "top_k"),
        (lambda: PPOConfig(ppo_epochs=2.0), "ppo_epochs"),
        (lambda: PPOConfig(whiten_advantages="yes"), "whiten_advantages"),
    ],
)
def test_every_config_names_the_field_of_the_wrong_type(build, field):
    with pytest.raises(FieldTypeError, match=field) as caught:
        build()
    assert isinstance(caught.value, TypeError) and isinstance(caught.value, ValueError)  # old excepts still catch it


def test_a_stage_config_names_itself_and_stores_int_rates_as_floats():
    with pytest.raises(FieldTypeError, match=r"^SFTConfig: batch_size"):
        SFTConfig(train_dataset=[], batch_size="8")
    assert type(SFTConfig(train_dataset=[], learning_rate=1).learning_rate) is float
    assert type(PPOConfig(learning_rate=1).learning_rate) is float
