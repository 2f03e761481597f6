"""The PPO stage has every stage's training fields (`TrainingFields`): the old spellings (`num_ppo_steps`,
PPOConfig's training fields inside `ppo=`) still work, warn, and make the same config; PPO's own defaults
hold; old TOML files load; and the fields act (learning-rate schedule, log cadence, epochs)."""

import dataclasses
import math
import re

import pytest
import torch
from conftest import tiny_lm, weights
from test_ppo import STAGE_PPO, STAGE_TRAINING, fraction_ascii, stage_context

from self_rewarding_lm_pytorch import PPOConfig, PPOStageConfig
from self_rewarding_lm_pytorch.config_file import parse_pipeline
from self_rewarding_lm_pytorch.core.files import read_jsonl
from self_rewarding_lm_pytorch.manifest import stage_hash
from self_rewarding_lm_pytorch.stages.fields import TrainingFields
from self_rewarding_lm_pytorch.stages.ppo import DEFAULT_NUM_STEPS, MOVED_TO_STAGE

OLD = dict(num_ppo_steps=7, ppo=PPOConfig(batch_size=4, mini_batch_size=2, learning_rate=1e-3, ppo_epochs=1))
NEW = dict(num_train_steps=7, batch_size=4, mini_batch_size=2, learning_rate=1e-3, ppo=PPOConfig(ppo_epochs=1))


@pytest.mark.unit
def test_old_spellings_warn_and_make_the_same_config():
    with pytest.warns(DeprecationWarning) as caught:
        old = PPOStageConfig(["x"], **OLD)
    assert {str(w.message).split(" is deprecated")[0] for w in caught} == {
        "PPOStageConfig: num_ppo_steps",
        "PPOStageConfig: ppo.batch_size",
        "PPOStageConfig: ppo.mini_batch_size",
        "PPOStageConfig: ppo.learning_rate",
    }
    new = PPOStageConfig(["x"], **NEW)
    assert old == new
    assert stage_hash(old, None) == stage_hash(new, None)  # a run may switch spelling and still resume
    assert (new.num_train_steps, new.batch_size, new.mini_batch_size, new.learning_rate) == (7, 4, 2, 1e-3)
    assert dataclasses.replace(new, batch_size=8).batch_size == 8  # no stale copy of the old spelling left
    # positional, as before: (prompt_dataset, num_ppo_steps, reward, ppo, ...)
    with pytest.warns(DeprecationWarning):
        assert PPOStageConfig(["x"], 7, fraction_ascii).num_train_steps == 7


@pytest.mark.unit
def test_old_and_new_spelling_in_disagreement_is_an_error():
    with pytest.raises(ValueError, match=re.escape("learning_rate=0.01 but ppo.learning_rate=0.001")):
        PPOStageConfig(["x"], learning_rate=1e-2, ppo={"learning_rate": 1e-3})
    with pytest.raises(ValueError, match="num_train_steps=3 but num_ppo_steps=4"):
        PPOStageConfig(["x"], num_train_steps=3, num_ppo_steps=4)
    with pytest.warns(DeprecationWarning):  # agreeing is fine
        assert PPOStageConfig(["x"], batch_size=16, ppo={"batch_size": 16}).batch_size == 16


@pytest.mark.unit
def test_training_fields_and_ppo_defaults():
    names = {f.name for f in dataclasses.fields(PPOStageConfig)}
    assert {f.name for f in dataclasses.fields(TrainingFields)} <= names
    stage, ppo = PPOStageConfig(["x"]), PPOConfig()
    for name in MOVED_TO_STAGE:  # the stage's defaults are PPOConfig's (TRL's learning rate among them)
        assert getattr(stage, name) == getattr(ppo, name), name
    assert stage.checkpoint_every == 10 and stage.log_every == 1
    assert stage.total_steps(1000) == DEFAULT_NUM_STEPS
    assert PPOStageConfig(["x"], num_epochs=2).total_steps(20) == 5  # 2 passes over 20 prompts, 8 per step
    assert PPOStageConfig(["x"], num_epochs=2, num_train_steps=3).total_steps(20) == 3


OLD_TOML = """
run_dir = "run"
[[stages]]
kind = "ppo"
prompt_dataset = ["a", "b"]
num_ppo_steps = 3
[stages.ppo]
batch_size = 4
mini_batch_size = 2
ppo_epochs = 1
learning_rate = 1e-4
"""


@pytest.mark.unit
def test_an_old_toml_file_loads_to_the_new_config(tmp_path):
    import tomllib

    parsed = parse_pipeline(tomllib.loads(OLD_TOML), path=tmp_path / "p.toml")
    ((kind, kwargs),) = parsed.stages
    with pytest.warns(DeprecationWarning):
        old = PPOStageConfig(**kwargs)
    new = PPOStageConfig(
        ["a", "b"], num_train_steps=3, batch_size=4, mini_batch_size=2, learning_rate=1e-4, ppo={"ppo_epochs": 1}
    )
    assert kind == "ppo" and old == new


@pytest.mark.stage
def test_warmup_schedule_and_log_cadence_act(tmp_path):
    """lr_schedule/warmup_steps set each step's learning rate (as the loop's schedule does); log_every=2
    writes one record per 2 steps holding their means, and the last step's record."""
    stage = PPOStageConfig(
        ["ab", "cd", "ef"],
        num_train_steps=5,
        reward=fraction_ascii,
        ppo=STAGE_PPO,
        **STAGE_TRAINING | dict(warmup_steps=2, lr_schedule="linear"),
        max_new_tokens=4,
        log_every=2,
        checkpoint_every=None,
    )
    stage.run(stage_context(tiny_lm(), tmp_path))
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [2, 4, 5]
    # warmup (s+1)/2 for steps 0-1, then 1 - (s-2)/3 for steps 2-4 (0 only after the last step)
    lrs = [1e-3 * m for m in (1 / 2, 2 / 2, 1, 2 / 3, 1 / 3)]
    assert records[0]["ppo/learning_rate"] == pytest.approx((lrs[0] + lrs[1]) / 2)
    assert records[1]["ppo/learning_rate"] == pytest.approx((lrs[2] + lrs[3]) / 2)
    assert records[2]["ppo/learning_rate"] == pytest.approx(lrs[4])
    assert all(math.isfinite(r["objective/kl"]) for r in records)


@pytest.mark.stage
def test_weight_decay_is_adamw_on_matrices(tmp_path):
    """One optimizer step from the same weights on the same rollouts, with and without weight_decay:
    AdamW's decoupled decay makes the difference exactly -lr * weight_decay * w for every matrix, 0 for
    biases and norm gains (as the training loop applies it)."""

    def trained(weight_decay: float, folder: str) -> dict:
        model = tiny_lm()
        PPOStageConfig(
            ["ab"],
            num_train_steps=1,
            reward=fraction_ascii,
            ppo=STAGE_PPO,
            batch_size=2,
            mini_batch_size=2,
            learning_rate=1e-3,
            weight_decay=weight_decay,
            max_new_tokens=3,
        ).run(stage_context(model, tmp_path / folder))
        return weights(model)

    initial, plain, decayed = weights(tiny_lm()), trained(0.0, "plain"), trained(0.5, "decayed")
    assert read_jsonl(tmp_path / "plain" / "rollouts.jsonl") == read_jsonl(tmp_path / "decayed" / "rollouts.jsonl")
    for k, w in initial.items():
        expected = -1e-3 * 0.5 * w if w.ndim >= 2 else torch.zeros_like(w)
        torch.testing.assert_close(decayed[k] - plain[k], expected, atol=1e-6, rtol=0)


@pytest.mark.stage
def test_fsdp_with_one_process_warns_and_trains_unsharded(tmp_path):
    """fsdp=True with one process is a no-op with a warning, as in the loop: the same weights as fsdp=False."""

    def trained(fsdp: bool, folder: str) -> dict:
        model = tiny_lm()
        stage = PPOStageConfig(["ab", "cd"], num_train_steps=2, reward=fraction_ascii, ppo=STAGE_PPO, fsdp=fsdp)
        stage = dataclasses.replace(stage, **STAGE_TRAINING, max_new_tokens=3)
        stage.run(stage_context(model, tmp_path / folder))
        return weights(model)

    with pytest.warns(UserWarning, match="fsdp=True with one process"):
        sharded = trained(True, "fsdp")
    for k, v in trained(False, "plain").items():
        assert torch.equal(sharded[k], v), k
