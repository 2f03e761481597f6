"""PPO's log-probs are those of the distribution the rollouts were sampled from (issue #11, defect 2)."""

import pytest
import torch
from x_transformers import Decoder, TransformerWrapper

from self_rewarding_lm_pytorch.core.tokenizer import CallableTokenizer
from self_rewarding_lm_pytorch.rl.ppo import PPOConfig, PPOTrainer
from self_rewarding_lm_pytorch.stages.ppo import PPOStageConfig

pytestmark = pytest.mark.stage


def toy_model(seed=0):
    torch.manual_seed(seed)
    return TransformerWrapper(num_tokens=6, max_seq_len=16, attn_layers=Decoder(dim=16, depth=1, heads=2))


def toy_tokenizer():
    return CallableTokenizer(
        lambda s: [int(c) for c in s], lambda ids: "".join(map(str, ids.tolist())), pad_id=0, eos_id=None
    )


def trainer_at(temperature, **config):
    config = PPOConfig(batch_size=4, mini_batch_size=2, ppo_epochs=1, temperature=temperature, **config)
    return PPOTrainer(toy_model(), config=config, tokenizer=toy_tokenizer())


@pytest.mark.parametrize("temperature", [0.3, 0.7, 1.0, 2.5])
def test_logprobs_are_those_of_logits_over_temperature(temperature):
    trainer = trainer_at(temperature)
    ids = torch.tensor([[1, 2, 3, 4, 5, 2], [2, 3, 3, 1, 0, 5]])
    old, _, ref = trainer._rollout_forward(ids)
    with torch.no_grad():
        logits, _ = trainer.policy.eval()(ids)
    expected = (logits[:, :-1] / temperature).log_softmax(-1).gather(-1, ids[:, 1:, None])[..., 0]
    torch.testing.assert_close(old, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(ref, expected, rtol=0, atol=1e-6)  # the reference is the policy here
    if temperature != 1.0:  # and they are not the temperature-1 log-probs (the defect)
        assert not torch.allclose(old, logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None])[..., 0])


@pytest.mark.parametrize("temperature", [0.5, 1.0, 1.7])
def test_kl_to_an_identical_reference_is_exactly_zero_at_any_temperature(temperature):
    trainer = trainer_at(temperature)
    queries = [torch.tensor([1]), torch.tensor([2]), torch.tensor([1]), torch.tensor([2])]
    responses = trainer.generate(queries, max_new_tokens=5)
    stats = trainer.step(queries, responses, [1.0, 0.0, 0.5, 0.25])
    assert stats["objective/kl"] == 0.0
    # the first minibatch's new log-probs equal the old ones: the ratio starts at exactly 1
    assert stats["ppo/policy/clipfrac"] == 0.0


def test_generate_samples_at_the_configured_temperature_and_refuses_filters():
    from self_rewarding_lm_pytorch import UnsupportedSamplingError

    trainer = trainer_at(0.7)
    queries = [torch.tensor([1])]
    trainer.generate(queries, max_new_tokens=3, top_k=0, top_p=1.0)  # HF's "disabled" values are fine
    for kwargs, fragment in [
        (dict(top_k=3), "top_k=3"),
        (dict(top_p=0.9), "top_p=0.9"),
        (dict(min_p=0.1), "min_p=0.1"),
        (dict(temperature=1.0), "temperature"),
        (dict(do_sample=False), "temperature"),
    ]:
        with pytest.raises(UnsupportedSamplingError, match=fragment):
            trainer.generate(queries, max_new_tokens=3, **kwargs)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(top_k=5), "top_k=5"),
        (dict(top_p=0.9), "top_p=0.9"),
        (dict(min_p=0.05), "min_p=0.05"),
        (dict(temperature=0.0), "temperature > 0"),
        (dict(temperature=0.7, ppo=dict(temperature=0.5)), "set the sampling temperature once"),
    ],
)
def test_stage_refuses_sampling_ppo_cannot_account_for_at_construction(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        PPOStageConfig(prompt_dataset=["12"], **kwargs)


def test_ppo_config_refuses_a_non_positive_temperature():
    with pytest.raises(ValueError, match="temperature"):
        PPOConfig(temperature=0.0)
