"""Quickstart: SFT (M1), then one self-rewarding DPO iteration (M2), on a tiny model.

python examples/quickstart.py
"""

import tempfile

import torch
from x_transformers import Decoder, TransformerWrapper

from self_rewarding_lm_pytorch import ByteTokenizer, RewardConfig, SelfRewardDPOConfig, SelfRewardingTrainer, SFTConfig

torch.manual_seed(0)
model = TransformerWrapper(num_tokens=259, max_seq_len=48, attn_layers=Decoder(dim=32, depth=1, heads=2))
judge = RewardConfig(prompt_template="Rate {{ prompt }}{{ response }}:", reward_regex_template="Score: {{ reward }}")

sums = [(a, b) for a in range(10) for b in range(10)]
answers = [{"prompt": f"{a}+{b}=", "response": str(a + b)} for a, b in sums]
judgments = [  # M1 also learns to judge (the paper's evaluation fine-tuning data)
    {"prompt": judge.render(prompt=f"{a}+{b}=", response=str(r)), "response": f"Score: {5 if r == a + b else 1}"}
    for a, b in sums
    for r in (a + b, a + b + 1)
]
prompts = [f"{a}+{b}=" for a in range(10, 14) for b in range(2)]  # new prompts, no answers

stages = [
    SFTConfig(answers + judgments, num_train_steps=200, batch_size=16, learning_rate=3e-3),
    SelfRewardDPOConfig(prompts, 4, num_sampled_reward_responses=1, max_new_tokens=3, judge_max_new_tokens=9),
]
with tempfile.TemporaryDirectory() as run_dir:  # a real folder keeps every stage's files
    trainer = SelfRewardingTrainer(
        model, stages, tokenizer=ByteTokenizer(), self_reward_prompt_config=judge, checkpoints_folder=run_dir, seed=0
    )
    for summary in trainer():
        print(summary)
