"""SPIN samples each prompt's response within its own room, max_seq_len - len(prompt) (issue #11, defect 3)."""

import pytest
from conftest import tiny_lm

from self_rewarding_lm_pytorch.core.tokenizer import CallableTokenizer
from self_rewarding_lm_pytorch.trainers.spin import generate_synthetic

pytestmark = pytest.mark.stage

NO_EOS = CallableTokenizer(lambda s: [ord(c) % 32 for c in s], lambda ids: "", pad_id=0, eos_id=None, vocab_size=32)


def absolute_position_model():
    model = tiny_lm(num_tokens=32, max_seq_len=16, dim=16)
    assert not model.can_cache_kv_outside_max_seq_len  # learned absolute positions: nothing past position 15
    return model


@pytest.mark.parametrize("batch_size", [None, 1])
def test_prompts_of_different_lengths_each_fill_their_own_room(batch_size):
    examples = [([1, 2], [3]), ([4] * 11, [5]), ([6, 7, 8, 9, 10], [11]), ([12, 13], [14])]
    responses = generate_synthetic(
        absolute_position_model(), examples, tokenizer=NO_EOS, max_seq_len=16, batch_size=batch_size, seed=3
    )
    # without an EOS every row runs to its budget exactly
    assert [len(r) for r in responses] == [14, 5, 11, 14]
    assert all(0 <= t < 32 for r in responses for t in r)


def test_grouping_by_budget_is_seeded():
    examples = [([1, 2], [3]), ([4] * 11, [5])]
    model = absolute_position_model()
    first = generate_synthetic(model, examples, tokenizer=NO_EOS, max_seq_len=16, seed=5)
    assert generate_synthetic(model, examples, tokenizer=NO_EOS, max_seq_len=16, seed=5) == first
