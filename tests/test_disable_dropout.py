"""`disable_dropout` (TRL's name, default True) for DPO, SPIN and PPO (issue #11, defect 9)."""

import math

import pytest
import torch
import torch.nn.functional as F
from x_transformers import Decoder, TransformerWrapper

from self_rewarding_lm_pytorch.core.tokenizer import CallableTokenizer
from self_rewarding_lm_pytorch.rl.ppo import PPOConfig, PPOTrainer
from self_rewarding_lm_pytorch.stages.fields import TrainingFields
from self_rewarding_lm_pytorch.trainers.dpo import DPOTrainer
from self_rewarding_lm_pytorch.training.config import TrainConfig

pytestmark = pytest.mark.stage

LOG_2 = -F.logsigmoid(torch.tensor(0.0)).item()  # log 2 in float32, what a zero margin gives
PREFS = [
    {"prompt": "q", "chosen": "good answer", "rejected": "bad"},
    {"prompt": "r", "chosen": "yes", "rejected": "no"},
]


def dropout_model(num_tokens=259):
    torch.manual_seed(0)
    return TransformerWrapper(
        num_tokens=num_tokens,
        max_seq_len=32,
        emb_dropout=0.5,
        attn_layers=Decoder(dim=16, depth=2, heads=2, attn_dropout=0.5, ff_dropout=0.5, layer_dropout=0.0),
    )


@pytest.mark.parametrize("precompute_ref_logprobs", [True, False])
def test_step_zero_dpo_loss_is_exactly_log_2_with_dropout_in_the_model(precompute_ref_logprobs):
    model = dropout_model()
    trainer = DPOTrainer(
        model,
        PREFS,
        precompute_ref_logprobs=precompute_ref_logprobs,
        num_train_steps=1,
        batch_size=2,
        log_every=1,
        progress=False,
    )
    result = trainer()
    assert result.history[0]["loss"] == LOG_2
    assert result.history[0]["rewards/margins"] == 0.0
    # the model's own rates are back after training
    assert {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)} == {0.5}


def test_disable_dropout_false_keeps_it_on():
    model = dropout_model()
    result = DPOTrainer(
        model, PREFS, num_train_steps=1, batch_size=2, log_every=1, progress=False, disable_dropout=False
    )()
    assert result.history[0]["loss"] != LOG_2


def test_every_stage_inherits_the_field_with_trl_default():
    assert TrainConfig().disable_dropout is True
    assert {f for f in TrainingFields.__dataclass_fields__} >= {"disable_dropout"}
    assert PPOConfig().disable_dropout is True
    with pytest.raises(ValueError, match="disable_dropout"):
        TrainConfig(disable_dropout="yes")


def test_ppo_first_minibatch_ratio_is_exactly_one_with_dropout_in_the_model():
    tokenizer = CallableTokenizer(lambda s: [int(c) for c in s], lambda ids: "", pad_id=0, eos_id=None)
    trainer = PPOTrainer(
        dropout_model(num_tokens=6),
        config=PPOConfig(batch_size=2, mini_batch_size=2, ppo_epochs=1, cliprange=1e-6),
        tokenizer=tokenizer,
    )
    queries = [torch.tensor([1]), torch.tensor([2])]
    stats = trainer.step(queries, [torch.tensor([3, 4, 5]), torch.tensor([2, 3])], [1.0, 0.0])
    # with a tiny clip range any ratio != 1 would be clipped
    assert stats["ppo/policy/clipfrac"] == 0.0 and stats["ppo/policy/approxkl"] == 0.0
    assert not math.isnan(stats["ppo/loss/total"])


def test_sft_keeps_dropout_by_default_and_the_preference_stages_turn_it_off():
    from self_rewarding_lm_pytorch import SelfPlayConfig, SFTConfig, SFTTrainer

    assert SFTConfig([("a", "b")]).disable_dropout is False
    assert SelfPlayConfig([("a", "b")]).disable_dropout is True
    model = TransformerWrapper(num_tokens=259, max_seq_len=16, attn_layers=Decoder(dim=8, depth=1, heads=1))
    assert SFTTrainer(model, [("a", "b")]).config.disable_dropout is False
    assert SFTTrainer(model, [("a", "b")], disable_dropout=True).config.disable_dropout is True
