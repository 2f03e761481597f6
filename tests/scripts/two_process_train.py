"""Trains a tiny SFT model with the loop; launched by tests/test_two_process.py under
`accelerate launch --num_processes 2 --cpu`, and called in-process for the 1-process baseline.

Usage: python two_process_train.py OUT_DIR [CRASH_AT_CALL]. Each process writes OUT_DIR/report-rank{r}.json (what
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


def make_data(n=16, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, 256, (12,), generator=generator), torch.tensor(3)) for _ in range(n)]


def run(out_dir: Path, accelerate_kwargs: dict, crash_at_call: int | None = None) -> dict:
    """Train (with `crash_at_call`: crash inside that SFT step call, then resume); return what this
    process wrote: {"rank", "num_processes", "backend", "checkpoint_saves", "metric_writes", "model_saves"}."""
    from self_rewarding_lm_pytorch.core import files as data
    from self_rewarding_lm_pytorch.trainers.sft import SFTTask, train_sft
    from self_rewarding_lm_pytorch.training import checkpoint as ckpt
    from self_rewarding_lm_pytorch.training.accelerators import make_accelerator
    from self_rewarding_lm_pytorch.training.loop import TrainConfig

    counts = {"checkpoint_saves": 0, "metric_writes": 0, "model_saves": 0}
    # Count what this process writes by wrapping the writers the loop calls.
    originals = ckpt.save_training_state, data.JsonlAppender.write, ckpt.save_model, SFTTask.step

    def counting(name, fn):
        def wrapper(*args, **kwargs):
            counts[name] += 1
            return fn(*args, **kwargs)

        return wrapper

    calls = []

    def crashing_step(self, model, batch):
        calls.append(model.training)  # count training steps only: validation calls differ per process
        if sum(calls) == crash_at_call and model.training:
            raise RuntimeError("simulated crash")
        return originals[3](self, model, batch)

    ckpt.save_training_state = counting("checkpoint_saves", originals[0])
    data.JsonlAppender.write = counting("metric_writes", originals[1])
    ckpt.save_model = counting("model_saves", originals[2])
    SFTTask.step = crashing_step
    try:
        accelerator = make_accelerator(accelerate_kwargs)
        model = make_model()
        config = TrainConfig(
            num_train_steps=NUM_STEPS,
            batch_size=BATCH_SIZE,
            learning_rate=1e-2,
            log_every=1,
            checkpoint_every=CHECKPOINT_EVERY,
            valid_every=CHECKPOINT_EVERY,
            progress=False,
        )
        kwargs = dict(
            accelerator=accelerator, run_dir=out_dir / "run", config=config, valid_dataset=make_data(5, seed=2)
        )
        try:
            train_sft(model, make_data(), **kwargs)
        except RuntimeError:
            if crash_at_call is None:
                raise
            model = make_model()
            train_sft(model, make_data(), resume=True, **kwargs)
    finally:
        ckpt.save_training_state, data.JsonlAppender.write, ckpt.save_model, SFTTask.step = originals
    rank = accelerator.process_index
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, str(out_dir / f"weights-rank{rank}.safetensors")
    )
    backend = torch.distributed.get_backend() if torch.distributed.is_initialized() else None
    report = {"rank": rank, "num_processes": accelerator.num_processes, "backend": backend, **counts}
    (out_dir / f"report-rank{rank}.json").write_text(json.dumps(report))
    return report


if __name__ == "__main__":
    torch.set_num_threads(1)
    run(Path(sys.argv[1]), dict(cpu=True), crash_at_call=int(sys.argv[2]) if len(sys.argv) > 2 else None)
