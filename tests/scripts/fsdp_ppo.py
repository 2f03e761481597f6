"""The PPO stage under two processes: with DDP, with `fsdp=True`, and with `fsdp=True` crashed in step 3
and resumed from its step-2 checkpoint; launched by tests/test_fsdp.py (2 CPU processes, gloo).

Two more runs of one step score with the self-judge (ddp-judge, fsdp-judge).

Usage: python fsdp_ppo.py OUT_DIR. Writes, per run NAME (ddp, fsdp, resumed, ddp-judge, fsdp-judge),
OUT_DIR/NAME/ (the stage folder: rollouts.jsonl, metrics.jsonl, value_head.safetensors) and
OUT_DIR/NAME/model.safetensors (the policy after the stage); OUT_DIR/report-rank{r}.json holds the
parameter elements each process held in each sharded PPO step, the total, and what the policy holds
after the stage.
"""

import contextlib
import json
import sys
from pathlib import Path

import torch

PROMPTS = ["ab", "cd", "ef", "gh", "ij", "kl"]
# lr 1e-3: see fsdp_train.py (Adam scales rounding noise in near-zero gradients up to +-lr per step).
STAGE = dict(num_train_steps=3, batch_size=4, mini_batch_size=2, learning_rate=1e-3, max_new_tokens=4)


def make_model():
    from x_transformers import Decoder, TransformerWrapper

    torch.manual_seed(0)
    return TransformerWrapper(num_tokens=259, max_seq_len=32, attn_layers=Decoder(dim=16, depth=2, heads=2))


def fraction_ascii(prompts, responses):
    return [sum(c.isascii() for c in r) / max(len(r), 1) for r in responses]


class CrashOnCall:
    """fraction_ascii that raises on its `n`-th call, on every process (a crash of the whole job)."""

    def __init__(self, n):
        self.n, self.calls = n, 0

    def __call__(self, prompts, responses):
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt("simulated crash")
        return fraction_ascii(prompts, responses)


def run(out_dir: Path, accelerate_kwargs: dict):
    from self_rewarding_lm_pytorch import PPOConfig, PPOStageConfig, PPOTrainer, RewardConfig
    from self_rewarding_lm_pytorch.core.tokenizer import ByteTokenizer
    from self_rewarding_lm_pytorch.stages.context import StageContext
    from self_rewarding_lm_pytorch.training.accelerators import make_accelerator
    from self_rewarding_lm_pytorch.training.checkpoint import save_model
    from self_rewarding_lm_pytorch.training.sharding import local_parameter_count

    accelerator = make_accelerator(accelerate_kwargs)
    rank = accelerator.process_index
    held = []
    inner = PPOTrainer.step

    def step(self, *args, **kwargs):
        if self.sharded is not None:
            held.append(local_parameter_count(self.model))
        return inner(self, *args, **kwargs)

    PPOTrainer.step = step

    # the self-judge samples its judgments from the policy too (a score is the judgment's length)
    judge = RewardConfig(
        "J: {{ prompt }}|{{ response }}\n", "Score: {{ reward }}", parse_reward=lambda t: float(len(t))
    )

    def stage(name: str, reward, *, fsdp: bool, resume: bool = False, checkpoint_every=None, **kwargs):
        model = make_model()
        ctx = StageContext(model, ByteTokenizer(), accelerator, out_dir / name, 7, resume, judge, progress=False)
        config = PPOStageConfig(
            PROMPTS,
            reward=reward,
            ppo=PPOConfig(ppo_epochs=2),
            fsdp=fsdp,
            checkpoint_every=checkpoint_every,
            **STAGE | kwargs,
        )
        config.run(ctx)
        if accelerator.is_main_process:
            save_model(model, out_dir / name / "model.safetensors")
        return model

    stage("ddp", fraction_ascii, fsdp=False)
    stage("fsdp", fraction_ascii, fsdp=True)
    stage("ddp-judge", "self_judge", fsdp=False, num_train_steps=1, num_judgments=1, judge_max_new_tokens=3)
    stage("fsdp-judge", "self_judge", fsdp=True, num_train_steps=1, num_judgments=1, judge_max_new_tokens=3)
    with contextlib.suppress(KeyboardInterrupt):  # the whole job crashes in step 3, after the step-2 checkpoint
        stage("resumed", CrashOnCall(3), fsdp=True, checkpoint_every=2)
    model = stage("resumed", fraction_ascii, fsdp=True, resume=True, checkpoint_every=2)
    PPOTrainer.step = inner
    report = {
        "num_processes": accelerator.num_processes,
        "held": held,
        "total": sum(p.numel() for p in make_model().parameters()) + 16 + 1,  # + the value head
        "after": local_parameter_count(model),
    }
    (out_dir / f"report-rank{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    torch.set_num_threads(1)
    run(Path(sys.argv[1]), dict(cpu=True))
