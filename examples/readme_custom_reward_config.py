"""The seed README's custom judge: ask the model nicely, parse "Rating: <n>".

    python examples/readme_custom_reward_config.py

The template must use exactly {{ prompt }} and {{ response }} (checked when the RewardConfig is
built); `{{ reward }}` in the regex template marks the number to read (the last match wins).
"""

import tempfile

import torch
from x_transformers import Decoder, TransformerWrapper

from self_rewarding_lm_pytorch import RewardConfig, SelfRewardingTrainer, create_mock_dataset

torch.manual_seed(0)

transformer = TransformerWrapper(num_tokens=259, max_seq_len=256, attn_layers=Decoder(dim=16, depth=1, heads=2))

reward_config = RewardConfig(
    prompt_template="""
    Pretty please rate the following user prompt and response
    User: {{ prompt }}
    Response: {{ response }}

    Format your score as follows:
    Rating: <rating as integer from 0 - 10>
    """,
    reward_regex_template="""
    Rating: {{ reward }}
    """,
)

if __name__ == "__main__":
    print(reward_config.render(prompt="2+2=", response="4"))
    print("parsed:", reward_config.parse("I like it. Rating: 7"))
    with tempfile.TemporaryDirectory() as folder:
        trainer = SelfRewardingTrainer(
            transformer,
            finetune_configs=dict(
                train_sft_dataset=create_mock_dataset(16, lambda: ("2+2=", "4")),
                self_reward_prompt_dataset=create_mock_dataset(16, lambda: "2+2="),
                dpo_num_train_steps=2,
                num_generated_preference_pairs=(2, 2),
                sft_config=dict(num_train_steps=4, batch_size=4),
                self_reward_config=dict(max_new_tokens=8, judge_max_new_tokens=16),
            ),
            self_reward_prompt_config=reward_config,
            accelerate_kwargs=dict(cpu=True),
            checkpoints_folder=folder,
            seed=0,
        )
        trainer(overwrite_checkpoints=True)
