"""Preference stages train for epochs over the pairs they actually made, with num_train_steps as a cap."""

import math

import pytest
from conftest import tiny_lm

from self_rewarding_lm_pytorch import ByteTokenizer, ExternalRewardDPOConfig, SelfPlayConfig, SelfRewardingTrainer

pytestmark = pytest.mark.stage

PROMPTS = [f"q{i}" for i in range(10)]


def count_a(prompts, responses):
    return [r.count("a") - 0.01 * len(r) for r in responses]


def run(tmp_path, stages):
    model = tiny_lm(max_seq_len=32, dim=16)
    trainer = SelfRewardingTrainer(
        model,
        stages,
        tokenizer=ByteTokenizer(),
        checkpoints_folder=tmp_path / "run",
        seed=3,
        accelerate_kwargs=dict(cpu=True),
        progress=False,
    )
    return trainer()


@pytest.mark.parametrize("epochs, cap", [(2, 100), (1.5, 100), (3, 4)])
def test_dpo_stage_steps_are_epochs_over_the_pairs_made_capped_by_num_train_steps(tmp_path, epochs, cap):
    stage = ExternalRewardDPOConfig(
        count_a, PROMPTS, 10, num_epochs=epochs, num_train_steps=cap, batch_size=3, max_new_tokens=6
    )
    (summary,) = run(tmp_path, [stage])
    pairs = summary["num_pairs"]
    assert 0 < pairs <= 10
    assert summary["train_steps"] == min(cap, math.ceil(epochs * pairs / 3))


def test_spin_iterations_use_epochs_too(tmp_path):
    data = [{"prompt": p, "response": "aa"} for p in PROMPTS[:5]]
    stage = SelfPlayConfig(data, num_iterations=2, num_epochs=2, num_train_steps=50, batch_size=2, max_seq_len=32)
    (summary,) = run(tmp_path, [stage])
    assert summary["train_steps"] == [math.ceil(2 * 5 / 2)] * 2
