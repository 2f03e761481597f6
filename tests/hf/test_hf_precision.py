"""bf16 mixed precision on CPU (HF and x-transformers models; losses and log-probs in fp32) and
gradient checkpointing (HF's; an error for x-transformers, which has none)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from self_rewarding_lm_pytorch import SFTTrainer

from .conftest import load_model

SFT = [{"prompt": "say hello", "response": "hello!"}, {"prompt": "the cat", "response": "sat."}] * 2


@pytest.mark.stage
def test_bf16_autocast_on_cpu_trains_both_model_kinds_with_fp32_logprobs(hf_folders):
    script = str(Path(__file__).parent / "precision_check.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, script, str(hf_folders["llama"])], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["hf"]["logits_dtype"] == "torch.bfloat16"  # autocast really ran in bf16
    for kind in ("hf", "xtransformers"):  # (x-transformers hands back fp32 logits itself)
        assert result[kind]["logprobs_dtype"] == "torch.float32", kind
        assert result[kind]["finite"] and result[kind]["changed"], kind


@pytest.mark.stage
def test_gradient_checkpointing_gives_the_same_training_as_without(hf_folders, hf_tokenizer):
    runs = []
    for checkpointing in (False, True):
        model = load_model(hf_folders, "llama")
        SFTTrainer(
            model, SFT, tokenizer=hf_tokenizer, num_train_steps=2, batch_size=2, progress=False,
            gradient_checkpointing=checkpointing, accelerate_kwargs=dict(cpu=True),
        )()  # fmt: skip
        runs.append(model)
    assert runs[1].model.gradient_checkpointing and not runs[0].model.gradient_checkpointing
    for (name, a), b in zip(runs[0].state_dict().items(), runs[1].state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)


@pytest.mark.unit
def test_gradient_checkpointing_on_x_transformers_is_an_error(tiny_model):
    with pytest.raises(ValueError, match="no gradient checkpointing"):
        SFTTrainer(
            tiny_model, SFT, num_train_steps=1, batch_size=2, progress=False, gradient_checkpointing=True,
            accelerate_kwargs=dict(cpu=True),
        )()  # fmt: skip
