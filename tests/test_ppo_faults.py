"""The PPO stage survives the same faults as the training loop: a stop signal writes a checkpoint and
exits non-zero (the rerun resumes to the weights of an uninterrupted run), and a non-finite loss is
refused before the optimizer step applies it."""

import os
import signal

import pytest
import torch
from conftest import tiny_lm, weights
from test_ppo import STAGE_PPO, STAGE_TRAINING, fraction_ascii, stage_context

from self_rewarding_lm_pytorch import NonFiniteLossError, PPOStageConfig, TrainingStopped
from self_rewarding_lm_pytorch.training.checkpoint import latest_checkpoint

pytestmark = pytest.mark.stage

PROMPTS = ["ab", "cd", "ef"]
COMMON = dict(num_train_steps=4, ppo=STAGE_PPO, **STAGE_TRAINING, max_new_tokens=6, checkpoint_every=None)


class SignalsOnCall:
    """fraction_ascii that sends this process `signum` on its `n`-th call (mid-step, as a scheduler would)."""

    def __init__(self, n, signum):
        self.n, self.signum, self.calls = n, signum, 0

    def __call__(self, prompts, responses):
        self.calls += 1
        if self.calls == self.n:
            os.kill(os.getpid(), self.signum)
        return fraction_ascii(prompts, responses)


def test_a_signal_checkpoints_the_step_exits_nonzero_and_resumes_to_the_same_weights(tmp_path):
    straight = tiny_lm()
    PPOStageConfig(PROMPTS, reward=fraction_ascii, **COMMON).run(stage_context(straight, tmp_path / "a"))

    stopped = tiny_lm()
    with pytest.raises(TrainingStopped) as info:
        PPOStageConfig(PROMPTS, reward=SignalsOnCall(2, signal.SIGINT), **COMMON).run(
            stage_context(stopped, tmp_path / "b")
        )
    assert info.value.code == 128 + signal.SIGINT
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    checkpoint = latest_checkpoint(tmp_path / "b")
    assert checkpoint is not None and checkpoint.name.endswith("2")  # written by the signal: no periodic ones

    resumed = tiny_lm()  # the pipeline reloads the stage's starting weights before resuming
    summary = PPOStageConfig(PROMPTS, reward=fraction_ascii, **COMMON).run(
        stage_context(resumed, tmp_path / "b", resume=True)
    )
    assert summary["resumed_from_step"] == 2
    for k, v in weights(straight).items():
        torch.testing.assert_close(weights(resumed)[k], v, rtol=1e-5, atol=1e-5, msg=k)


def test_a_non_finite_loss_is_refused_before_the_update(tmp_path, monkeypatch):
    from self_rewarding_lm_pytorch.rl import ppo

    policy_loss = ppo.ppo_policy_loss

    def diverged(*args, **kwargs):  # a policy loss that has gone NaN, as a diverging run's would
        loss, clipfrac = policy_loss(*args, **kwargs)
        return loss * float("nan"), clipfrac

    monkeypatch.setattr(ppo, "ppo_policy_loss", diverged)
    model = tiny_lm()
    before = weights(model)
    with pytest.raises(NonFiniteLossError, match="PPO step 1"):
        PPOStageConfig(PROMPTS, reward=fraction_ascii, **COMMON).run(stage_context(model, tmp_path))
    after = weights(model)
    assert all(torch.equal(after[k], v) for k, v in before.items())
