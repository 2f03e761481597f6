"""The pipeline SFT -> self-reward DPO with `fsdp=True` in both stages, through `SelfRewardingTrainer`;
launched by tests/test_fsdp.py under 2 processes and called in-process for the one-process baseline.

The self-reward stage samples candidates and judges them with the sharded model (its generation chunks
split across the processes), makes pairs and trains on them. A judge whose every judgment parses (the
score is the judgment's length) makes sure pairs are made by a random tiny model.

Usage: python fsdp_self_reward.py OUT_DIR. Writes the run to OUT_DIR/run and the weights the model ends
with to OUT_DIR/weights-rank{r}.safetensors (outside the run folder, which only rank 0 writes).
"""

import sys
from pathlib import Path

import torch

PROMPTS = ["ab", "cd", "ef", "gh", "ij", "kl"]
# lr 1e-3: see fsdp_train.py (Adam scales rounding noise in near-zero gradients up to +-lr per step).
COMMON = dict(batch_size=2, learning_rate=1e-3, fsdp=True)


def run(out_dir: Path, accelerate_kwargs: dict) -> None:
    from accelerate import PartialState
    from safetensors.torch import save_file
    from x_transformers import Decoder, TransformerWrapper

    from self_rewarding_lm_pytorch import (
        ByteTokenizer,
        RewardConfig,
        SelfRewardDPOConfig,
        SelfRewardingTrainer,
        SFTConfig,
    )

    torch.manual_seed(0)
    model = TransformerWrapper(num_tokens=259, max_seq_len=64, attn_layers=Decoder(dim=16, depth=2, heads=2))
    judge = RewardConfig("rate {{ prompt }} {{ response }}", "{{ reward }}", parse_reward=lambda text: float(len(text)))
    stages = [
        SFTConfig([{"prompt": p, "response": p.upper()} for p in PROMPTS], num_train_steps=3, **COMMON),
        SelfRewardDPOConfig(
            PROMPTS,
            6,
            num_train_steps=3,
            max_new_tokens=4,
            judge_max_new_tokens=4,
            num_sampled_reward_responses=1,
            allow_unfinished_chosen=True,  # a random tiny model rarely writes EOS within 4 tokens
            generation_chunk_size=2,  # 3 chunks: both processes generate a share
            **COMMON,
        ),
    ]
    trainer = SelfRewardingTrainer(
        model,
        stages,
        tokenizer=ByteTokenizer(),
        checkpoints_folder=out_dir / "run",
        seed=7,
        accelerate_kwargs=accelerate_kwargs,
        progress=False,
        self_reward_prompt_config=judge,
    )
    trainer()
    rank = PartialState().process_index
    weights = {k: v.detach().contiguous().clone() for k, v in trainer.model.state_dict().items()}
    save_file(weights, str(out_dir / f"weights-rank{rank}.safetensors"))


if __name__ == "__main__":
    torch.set_num_threads(1)
    run(Path(sys.argv[1]), dict(cpu=True))
