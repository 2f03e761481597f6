"""The seed README's first example, as written but with a tiny model: the paper's recipe from a dict.

    python examples/readme_paper_recipe.py

`finetune_configs=dict(...)` is `create_default_paper_config(...)`: SFT, then two self-reward DPO
iterations (M1 -> M2 -> M3). With a random mock dataset the model cannot judge yet, so the
self-reward stages usually find no parseable scores: they say so, train nothing, and the pipeline
goes on (the reference package looped forever here).
"""

import tempfile

import torch
from torch import Tensor
from x_transformers import Decoder, TransformerWrapper

from self_rewarding_lm_pytorch import SelfRewardingTrainer, create_mock_dataset

torch.manual_seed(0)

transformer = TransformerWrapper(
    num_tokens=256,
    max_seq_len=512,  # the README's 1024 and dim 512 work too, just slower; the default judge prompt needs ~450
    attn_layers=Decoder(dim=16, depth=1, heads=2),
)

sft_dataset = create_mock_dataset(100, lambda: (torch.randint(0, 256, (32,)), torch.tensor(1)))
prompt_dataset = create_mock_dataset(100, lambda: "mock prompt")


def decode_tokens(tokens: Tensor) -> str:
    decode_token = lambda token: str(chr(max(32, token)))  # noqa: E731
    return "".join(list(map(decode_token, tokens)))


def encode_str(seq_str: str) -> Tensor:
    return Tensor(list(map(ord, seq_str)))  # floats of whole numbers are accepted as token ids


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as folder:
        trainer = SelfRewardingTrainer(
            transformer,
            finetune_configs=dict(
                train_sft_dataset=sft_dataset,
                self_reward_prompt_dataset=prompt_dataset,
                dpo_num_train_steps=2,
                num_generated_preference_pairs=(2, 2),  # the paper: (3964, 6942)
                sft_config=dict(num_train_steps=4, batch_size=4),
                self_reward_config=dict(max_new_tokens=8, judge_max_new_tokens=16, batch_size=2),
            ),
            tokenizer_decode=decode_tokens,
            tokenizer_encode=encode_str,
            accelerate_kwargs=dict(cpu=True),
            checkpoints_folder=folder,  # the README's default is ./checkpoints
            seed=0,
        )
        summaries = trainer(overwrite_checkpoints=True)
        print("stages finished:", len(summaries))
