"""SPIN (two iterations: sampling from the model trained in the first) and the reward model, trained
with `fsdp=True`; launched by tests/test_fsdp.py under 2 processes and called in-process for 1.

Usage: python fsdp_stages.py OUT_DIR. Writes OUT_DIR/spin/iteration-{k}/model.safetensors,
OUT_DIR/rm/model.safetensors and OUT_DIR/spin-samples-rank{r}.json (iteration 2's synthetic responses).
"""

import json
import sys
from pathlib import Path

import torch

# lr 1e-3: see fsdp_train.py (Adam scales rounding noise in near-zero gradients up to +-lr per step).
COMMON = dict(num_train_steps=3, batch_size=4, learning_rate=1e-3, progress=False, fsdp=True)


def run(out_dir: Path, accelerate_kwargs: dict):
    from x_transformers import Decoder, TransformerWrapper

    from self_rewarding_lm_pytorch.trainers.reward_model import RewardModel, RewardModelTrainer
    from self_rewarding_lm_pytorch.trainers.spin import SPINTrainer
    from self_rewarding_lm_pytorch.training.accelerators import make_accelerator

    accelerator = make_accelerator(accelerate_kwargs)
    torch.manual_seed(0)
    model = TransformerWrapper(num_tokens=259, max_seq_len=24, attn_layers=Decoder(dim=16, depth=2, heads=2))
    items = [{"prompt": f"{i}+{i}=", "response": str(2 * i)} for i in range(8)]
    results = SPINTrainer(
        model,
        train_sft_dataset=items,
        max_seq_len=24,
        num_iterations=2,
        mix_previous_synthetic=True,
        accelerator=accelerator,
        checkpoint_folder=out_dir / "spin",
        **COMMON,
    )()
    samples = json.loads(json.dumps([r is not None for r in results]))
    torch.manual_seed(1)
    rm = RewardModel(num_tokens=259, max_seq_len=24, dim=16, depth=2, heads=2)
    ranked = [
        {"prompt": f"{i}?", "ranked_outputs": ["good" * (1 + i % 2), "ok", "bad" * (1 + i % 3)]} for i in range(8)
    ]
    RewardModelTrainer(
        rm,
        None,
        ranked,
        valid_data=ranked[:3],
        accelerator=accelerator,
        checkpoint_folder=out_dir / "rm",
        valid_every=3,
        **COMMON,
    )()
    (out_dir / f"done-rank{accelerator.process_index}.json").write_text(json.dumps(samples))


if __name__ == "__main__":
    torch.set_num_threads(1)
    run(Path(sys.argv[1]), dict(cpu=True))
