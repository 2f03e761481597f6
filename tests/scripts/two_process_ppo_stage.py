"""A PPO stage run by one or two processes on the same global batch; writes the weights it ends with to
OUT/weights-rank{R}.safetensors and (the main process) the stage's rollouts and metrics to OUT.

    python two_process_ppo_stage.py OUT REWARD            # REWARD: "callable" or "self_judge"
    accelerate launch --multi_gpu --num_processes 2 two_process_ppo_stage.py OUT REWARD
"""

import shutil
import sys
from pathlib import Path

import torch
from accelerate import PartialState
from safetensors.torch import save_file
from x_transformers import Decoder, TransformerWrapper

from self_rewarding_lm_pytorch import ByteTokenizer, PPOConfig, PPOStageConfig, RewardConfig, SelfRewardingTrainer

PROMPTS = ["ab", "cd", "ef", "gh", "ij", "kl", "mn"]
# every judgment parses (its score is its length), so the self-judge scores every rollout
JUDGE = RewardConfig("{{ prompt }}>{{ response }}", "{{ reward }}", parse_reward=lambda text: float(len(text)))


def count_a(prompts, responses):
    # the rollouts of one prompt are unscored (NaN), so masking is part of what must match
    return [float("nan") if p == "ef" else r.count("a") - 0.1 * len(r) for p, r in zip(prompts, responses, strict=True)]


def main(out: Path, reward: str):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = TransformerWrapper(num_tokens=259, max_seq_len=48, attn_layers=Decoder(dim=16, depth=1, heads=2))
    stage = PPOStageConfig(
        PROMPTS,
        reward=count_a if reward == "callable" else "self_judge",
        num_train_steps=3,
        batch_size=4,  # global: 2 rollouts per process
        mini_batch_size=2,
        learning_rate=3e-3,
        max_new_tokens=6,
        judge_max_new_tokens=3,
        num_judgments=2,
        ppo=PPOConfig(ppo_epochs=2, reward_norm=True),
    )
    trainer = SelfRewardingTrainer(
        model,
        [stage],
        tokenizer=ByteTokenizer(),
        checkpoints_folder=out / "run",
        seed=3,
        accelerate_kwargs=dict(cpu=True),
        progress=False,
        self_reward_prompt_config=JUDGE,
    )
    initial = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    trainer()  # before PartialState(): the trainer's accelerator sets the processes up (on CPU)
    state = PartialState()
    if state.is_main_process:
        save_file(initial, str(out / "initial.safetensors"))
    if state.is_main_process:
        (stage_dir,) = (out / "run").glob("01-*")
        for name in ("rollouts.jsonl", "metrics.jsonl"):
            shutil.copy(stage_dir / name, out / name)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(out / f"weights-rank{state.process_index}.safetensors"),
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
