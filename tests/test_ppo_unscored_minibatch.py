"""PPO takes no optimizer step on a minibatch without a scored rollout (issue #11, defect 7)."""

import math

import pytest
import torch
from x_transformers import Decoder, TransformerWrapper

from self_rewarding_lm_pytorch.core.tokenizer import CallableTokenizer
from self_rewarding_lm_pytorch.rl.ppo import PPOConfig, PPOTrainer

pytestmark = pytest.mark.stage


def make_trainer(**config):
    torch.manual_seed(0)
    model = TransformerWrapper(num_tokens=6, max_seq_len=16, attn_layers=Decoder(dim=16, depth=1, heads=2))
    tokenizer = CallableTokenizer(lambda s: [int(c) for c in s], lambda ids: "", pad_id=0, eos_id=None)
    return PPOTrainer(model, config=PPOConfig(**config), tokenizer=tokenizer)


def adam_steps(trainer) -> set[int]:
    return {int(state["step"]) for state in trainer.optimizer.state.values()}


def snapshot(trainer) -> dict:
    weights = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
    adam = {
        i: {k: v.clone() for k, v in trainer.optimizer.state[p].items()}
        for i, p in enumerate(trainer.policy.parameters())
    }
    return {"weights": weights, "adam": adam}


QUERIES = [torch.tensor([1]), torch.tensor([2])]
RESPONSES = [torch.tensor([3, 4, 5]), torch.tensor([2, 3])]


def test_only_minibatches_with_a_scored_rollout_step_the_optimizer():
    # one rollout per minibatch, two epochs: 2 minibatches are scored, 2 are not
    trainer = make_trainer(batch_size=2, mini_batch_size=1, ppo_epochs=2)
    trainer.step(QUERIES, RESPONSES, [1.0, math.nan])
    assert adam_steps(trainer) == {2}


def test_an_unscored_minibatch_leaves_weights_and_adam_state_as_if_it_were_absent():
    """[scored, unscored] in minibatches of one trains exactly as the scored rollout alone does."""
    with_unscored = make_trainer(batch_size=2, mini_batch_size=1, ppo_epochs=2)
    with_unscored.step(QUERIES, RESPONSES, [1.0, math.nan])
    alone = make_trainer(batch_size=1, mini_batch_size=1, ppo_epochs=2)
    alone.step(QUERIES[:1], RESPONSES[:1], [1.0])
    a, b = snapshot(with_unscored), snapshot(alone)
    for k in a["weights"]:
        torch.testing.assert_close(a["weights"][k], b["weights"][k], rtol=0, atol=1e-6)
    for sa, sb in zip(a["adam"].values(), b["adam"].values(), strict=True):
        assert sa.keys() == sb.keys()
        for k in sa:
            torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=1e-6)
