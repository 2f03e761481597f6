"""Trains a tiny SFT model with the loop; launched by tests/test_two_process.py under
`accelerate launch --num_processes 2 --cpu`, and called in-process for the 1-process baseline.

Usage: python two_process_train.py OUT_DIR. Each process writes OUT_DIR/report-rank{r}.json (what
the loop wrote from that process) and OUT_DIR/weights-rank{r}.safetensors (its final weights).
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

NUM_STEPS, BATCH_SIZE, CHECKPOINT_EVERY = 6, 4, 3


def make_model():
    from x_transformers import Decoder, TransformerWrapper

    torch.manual_seed(0)
    return TransformerWrapper(num_tokens=259, max_seq_len=32, attn_layers=Decoder(dim=16, depth=1, heads=2))


def make_data():
    generator = torch.Generator().manual_seed(1)
    return [(torch.randint(0, 256, (12,), generator=generator), torch.tensor(3)) for _ in range(16)]


def run(out_dir: Path, accelerate_kwargs: dict) -> dict:
    """Train; return {"rank", "num_processes", "checkpoint_saves", "metric_writes"} for this process."""
    from self_rewarding_lm_pytorch import checkpoint as ckpt
    from self_rewarding_lm_pytorch import data, loop
    from self_rewarding_lm_pytorch.loop import TrainConfig, make_accelerator
    from self_rewarding_lm_pytorch.stages.sft import train_sft

    counts = {"checkpoint_saves": 0, "metric_writes": 0, "model_saves": 0}
    # Count what this process writes by wrapping the writers the loop calls.
    original_save, original_write, original_model = ckpt.save_training_state, data.JsonlAppender.write, ckpt.save_model

    def counting(name, fn):
        def wrapper(*args, **kwargs):
            counts[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    ckpt.save_training_state = counting("checkpoint_saves", original_save)
    ckpt.save_model = counting("model_saves", original_model)
    data.JsonlAppender.write = counting("metric_writes", original_write)
    try:
        accelerator = make_accelerator(accelerate_kwargs)
        model = make_model()
        config = TrainConfig(num_train_steps=NUM_STEPS, batch_size=BATCH_SIZE, learning_rate=1e-2, log_every=1,
                             checkpoint_every=CHECKPOINT_EVERY, progress=False)
        train_sft(model, make_data(), accelerator=accelerator, run_dir=out_dir / "run", config=config)
    finally:
        ckpt.save_training_state, data.JsonlAppender.write, ckpt.save_model = original_save, original_write, original_model
    rank = accelerator.process_index
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out_dir / f"weights-rank{rank}.safetensors"))
    report = {"rank": rank, "num_processes": accelerator.num_processes, **counts}
    (out_dir / f"report-rank{rank}.json").write_text(json.dumps(report))
    return report


if __name__ == "__main__":
    torch.set_num_threads(1)
    run(Path(sys.argv[1]), dict(cpu=True))
