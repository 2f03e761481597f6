"""Trains a tiny model with SFT or DPO through the loop, with `fsdp=True`; launched by tests/test_fsdp.py
under `accelerate launch --multi_gpu --num_processes 2` (gloo on CPU) and called in-process for the
one-process baseline.

Usage: python fsdp_train.py OUT_DIR KIND [KILL_AT_STEP]. KIND is sft, dpo (precomputed reference
log-probs) or dpo-live (a frozen reference copy in every step). With KILL_AT_STEP, process 1 kills
itself (SIGKILL) inside that training step; a rerun resumes from the last checkpoint. Each process
writes OUT_DIR/report-rank{r}.json: the parameter elements it held while training, and the total.
"""

import json
import os
import signal
import sys
from pathlib import Path

import torch

NUM_STEPS, BATCH_SIZE, CHECKPOINT_EVERY = 6, 4, 2
# Adam divides by the gradient's running scale, so an element whose gradient is near zero moves by about
# +-lr whatever the rounding of its sum; two processes sum in another order than one. lr 1e-3 keeps that
# rounding-driven gap below the tests' 1e-4 (at 1e-2 one element of 30k differed by 1.02e-4).
LEARNING_RATE = 1e-3


def make_model():
    from x_transformers import Decoder, TransformerWrapper

    torch.manual_seed(0)
    return TransformerWrapper(num_tokens=259, max_seq_len=32, attn_layers=Decoder(dim=16, depth=2, heads=2))


def sft_data(n=16):
    return [{"prompt": f"q{i}: ", "response": "abc"[: 1 + i % 3] * (1 + i % 4)} for i in range(n)]


def dpo_records(n=16):
    return [{"prompt": f"{i}?", "chosen": "yes" * (1 + i % 3), "rejected": "no" * (1 + i % 5)} for i in range(n)]


def run(out_dir: Path, kind: str, accelerate_kwargs: dict, kill_at_step: int | None = None) -> dict:
    from self_rewarding_lm_pytorch.core.tokenizer import ByteTokenizer
    from self_rewarding_lm_pytorch.trainers import dpo, sft
    from self_rewarding_lm_pytorch.training.accelerators import make_accelerator
    from self_rewarding_lm_pytorch.training.loop import TrainConfig
    from self_rewarding_lm_pytorch.training.sharding import local_parameter_count

    accelerator = make_accelerator(accelerate_kwargs)
    rank = accelerator.process_index
    model = make_model()
    total = sum(p.numel() for p in model.parameters())
    held, calls = [], []
    task_class = sft.SFTTask if kind == "sft" else dpo.DPOTask
    inner = task_class.step
    # DPOTask inherits `step` from PairTask: the wrapper must be deleted afterwards, not replaced by the
    # inherited function, or DPOTask keeps a `step` of its own that hides later patches of PairTask.step
    # (the tests' crash injection), in this process, for the rest of the test session.
    had_own_step = "step" in vars(task_class)

    def step(self, module, batch):
        if module.training:
            calls.append(1)
            held.append(local_parameter_count(module))
            if kill_at_step is not None and rank == 1 and len(calls) == kill_at_step:
                os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no exception handler: a real kill
        return inner(self, module, batch)

    task_class.step = step
    config = TrainConfig(
        num_train_steps=NUM_STEPS,
        batch_size=BATCH_SIZE,
        learning_rate=LEARNING_RATE,
        log_every=1,
        checkpoint_every=CHECKPOINT_EVERY,
        progress=False,
        fsdp=True,
    )
    common = dict(accelerator=accelerator, run_dir=out_dir / "run", config=config, resume=True)
    tok = ByteTokenizer()
    try:
        if kind == "sft":
            sft.train_sft(model, sft_data(), tokenizer=tok, **common)
        else:
            dpo.train_dpo(model, dpo_records(), tokenizer=tok, precompute_ref_logprobs=kind == "dpo", **common)
    finally:
        if had_own_step:
            task_class.step = inner
        else:
            del task_class.step
    report = {
        "rank": rank,
        "num_processes": accelerator.num_processes,
        "held": held,
        "total": total,
        "after": local_parameter_count(model),  # the user's model holds everything again
    }
    (out_dir / f"report-rank{rank}.json").write_text(json.dumps(report))
    return report


if __name__ == "__main__":
    torch.set_num_threads(1)
    kill = int(sys.argv[3]) if len(sys.argv) > 3 else None
    run(Path(sys.argv[1]), sys.argv[2], dict(cpu=True), kill_at_step=kill)
