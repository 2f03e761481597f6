"""A LoRA policy's live reference is a view of the policy's own base weights (no second copy), which
FSDP shards while training: it is refused under sharding with a typed error, before any stage runs,
while the default precomputed reference, a reference-free loss and a one-process run are accepted."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from self_rewarding_lm_pytorch import (
    PPOStageConfig,
    SelfPlayConfig,
    SelfRewardingTrainer,
    SFTConfig,
    UnshardableReferenceError,
)
from self_rewarding_lm_pytorch.models import as_model
from self_rewarding_lm_pytorch.trainers.dpo import check_live_reference_shardable

from .conftest import load_model
from .test_hf_trainers import SFT, lora_config

pytestmark = pytest.mark.unit


def test_only_a_sharded_lora_live_reference_is_refused(hf_folders):
    lora = as_model(load_model(hf_folders, "llama"), peft_config=lora_config())
    with pytest.raises(UnshardableReferenceError, match="precompute_ref_logprobs=True"):
        check_live_reference_shardable(lora, sharded=True)
    check_live_reference_shardable(lora, sharded=False)  # one process: the view reads whole weights
    check_live_reference_shardable(as_model(load_model(hf_folders, "llama")), sharded=True)  # a copy is sharded


@pytest.mark.parametrize(
    ("stage", "refused"),
    [
        (SelfPlayConfig(SFT, precompute_ref_logprobs=False, fsdp=True), True),
        (SelfPlayConfig(SFT, fsdp=True), False),  # precomputed (the default): computed before sharding
        (SelfPlayConfig(SFT, precompute_ref_logprobs=False, fsdp=False), False),
        (SelfPlayConfig(SFT, precompute_ref_logprobs=False, dpo_loss_type="simpo", fsdp=True), False),
        (PPOStageConfig(["say hello"], reward=lambda p, r: [0.0] * len(r), fsdp=True), True),
    ],
)
def test_the_pipeline_refuses_before_writing_anything(hf_folders, hf_tokenizer, tmp_path, stage, refused):
    trainer = SelfRewardingTrainer(
        load_model(hf_folders, "llama"),
        [SFTConfig(SFT, num_train_steps=1), stage],
        tokenizer=hf_tokenizer,
        peft_config=lora_config(),
        checkpoints_folder=tmp_path / "run",
        progress=False,
    )
    two_processes = SimpleNamespace(num_processes=2)  # the check needs nothing else of the accelerator
    if refused:
        with pytest.raises(UnshardableReferenceError):
            trainer._run(two_processes, False)
        assert not (tmp_path / "run").exists()  # refused before the manifest or the first stage
    else:

        class PassedTheCheck(Exception):
            pass

        def next_step(*args):
            raise PassedTheCheck

        trainer._agree_on_manifest = next_step  # what _run does right after the check
        with pytest.raises(PassedTheCheck):
            trainer._run(two_processes, False)
