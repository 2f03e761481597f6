"""The whole pipeline (SFT -> self-reward DPO -> SPIN -> PPO) on a tiny Hugging Face model, shared by
the tests and run as a script for the two-process test (PPO included: its step depends only on the
global batch, so two processes make one process's update):

    python hf_pipeline.py MODEL_FOLDER OUT [lora]
    accelerate launch --multi_gpu --num_processes 2 hf_pipeline.py MODEL_FOLDER OUT [lora]

The script writes the weights it ends with to OUT/weights-rank{R}.safetensors.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from self_rewarding_lm_pytorch import (
    PPOConfig,
    PPOStageConfig,
    RewardConfig,
    SelfPlayConfig,
    SelfRewardDPOConfig,
    SelfRewardingTrainer,
    SFTConfig,
)

PROMPTS = ["say hello", "the cat", "what is two plus two?", "1 + 1 ="]
SFT_DATA = [{"prompt": p, "response": r} for p, r in zip(PROMPTS, ["hello!", "sat.", "four.", "2"], strict=True)]
# A judge whose every judgment parses (the score is the judgment's length), so pairs are made.
JUDGE = RewardConfig("rate: {{ prompt }} -> {{ response }}", "{{ reward }}", parse_reward=lambda text: float(len(text)))


def short_answers(prompts, responses):
    return [-float(len(r)) for r in responses]


def stages(*, lr: float = 1e-2):
    return [
        SFTConfig(SFT_DATA, num_train_steps=3, batch_size=2, learning_rate=lr),
        SelfRewardDPOConfig(
            PROMPTS,
            2,
            num_train_steps=2,
            batch_size=2,
            max_new_tokens=4,
            judge_max_new_tokens=4,
            num_sampled_reward_responses=1,
            allow_unfinished_chosen=True,  # a random tiny model rarely writes EOS within 4 tokens
            learning_rate=lr,
            checkpoint_every=1,
        ),
        SelfPlayConfig(SFT_DATA, num_train_steps=2, batch_size=2, max_seq_len=40, learning_rate=lr),
        PPOStageConfig(
            PROMPTS,
            num_train_steps=2,
            reward=short_answers,
            max_new_tokens=4,
            batch_size=2,
            mini_batch_size=2,
            learning_rate=lr,
            ppo=PPOConfig(ppo_epochs=1),
        ),
    ]


def lora_config():
    from peft import LoraConfig

    return LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])


def make_trainer(model_folder, out, *, lora=False, stage_kwargs=None, **kwargs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_folder)
    tokenizer = AutoTokenizer.from_pretrained(model_folder)
    trainer = SelfRewardingTrainer(
        model,
        stages(**(stage_kwargs or {})),
        tokenizer=tokenizer,
        checkpoints_folder=Path(out) / "run",
        seed=7,
        accelerate_kwargs=dict(cpu=True),
        progress=False,
        self_reward_prompt_config=JUDGE,
        peft_config=lora_config() if lora else None,
        **kwargs,
    )
    return trainer, model


def main(model_folder: str, out: Path, lora: bool):
    from accelerate import PartialState
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    # A small learning rate: the processes' float summation orders differ, and a large step amplifies that.
    trainer, _ = make_trainer(model_folder, out, lora=lora, stage_kwargs=dict(lr=1e-4))
    trainer()
    rank = PartialState().process_index
    weights = {k: v.detach().contiguous().clone() for k, v in trainer.model.state_dict().items()}
    save_file(weights, str(out / f"weights-rank{rank}.safetensors"))
    if rank == 0:  # what PPO trained on, to compare with one process's
        (ppo_dir,) = (Path(out) / "run").glob("04-ppo")
        (out / "ppo-rollouts.jsonl").write_text((ppo_dir / "rollouts.jsonl").read_text())


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), len(sys.argv) > 3 and sys.argv[3] == "lora")
