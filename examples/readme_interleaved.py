"""The seed README's research example: interleave SFT, SPIN, external-reward DPO and self-reward DPO.

    python examples/readme_interleaved.py

A pipeline is just a list of stage configs, run in order, each in its own folder
(`01-sft/`, `02-spin/`, ...), each starting its DPO reference from the current policy.
"""

import tempfile

import torch
from x_transformers import Decoder, TransformerWrapper

from self_rewarding_lm_pytorch import (
    ExternalRewardDPOConfig,
    SelfPlayConfig,
    SelfRewardDPOConfig,
    SelfRewardingTrainer,
    SFTConfig,
)
from self_rewarding_lm_pytorch.demo import demo_reward_config, verifier_reward

torch.manual_seed(0)

model = TransformerWrapper(num_tokens=259, max_seq_len=64, attn_layers=Decoder(dim=16, depth=1, heads=2))

sft_data = [{"prompt": f"{a}+{b}=", "response": str(a + b)} for a in range(8) for b in range(8)]
prompts = [f"{a}+{b}=" for a in range(10, 18) for b in range(3)]
train = dict(num_train_steps=2, batch_size=4)
prefs = dict(num_generated_preference_pairs=2, max_new_tokens=4, **train)

if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as folder:
        trainer = SelfRewardingTrainer(
            model,
            finetune_configs=[
                SFTConfig(sft_data, **train),
                SelfPlayConfig(sft_data, max_seq_len=16, **train),
                ExternalRewardDPOConfig(verifier_reward, prompts, **prefs),  # any (prompts, responses) -> scores
                SelfRewardDPOConfig(prompts, judge_max_new_tokens=34, **prefs),
                SelfPlayConfig(sft_data, max_seq_len=16, **train),
                SelfRewardDPOConfig(prompts, judge_max_new_tokens=34, **prefs),
            ],
            self_reward_prompt_config=demo_reward_config(),  # a judge template short enough for 64 tokens
            accelerate_kwargs=dict(cpu=True),
            checkpoints_folder=folder,
            seed=0,
        )
        for i, summary in enumerate(trainer()):
            print(i + 1, summary.get("num_pairs", "-"), summary.get("train_steps", "-"))
