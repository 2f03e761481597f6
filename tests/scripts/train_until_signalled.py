"""Trains a tiny regression model in `run_dir`; launched by tests/test_fault_signals.py (alone, or two
processes under `accelerate launch`), which sends SIGTERM once `ready-rank{r}` (holding that process's
pid) exists next to `run_dir`. Each process that stops on a signal writes `stopped-rank{r}` (the
message). Usage: python train_until_signalled.py RUN_DIR [--resume]."""

import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

NUM_STEPS = 40


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.GELU(), nn.Dropout(0.1), nn.Linear(16, 2))


def make_data():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(4, generator=g) for _ in range(12)]


class SlowTask:
    """Mean-square regression to a fixed map; from step 3 on it is slow enough for a signal to land mid-run."""

    def __init__(self, ready: Path | None):
        self.ready, self.calls = ready, 0

    def collate(self, items):
        return torch.stack(items)

    def step(self, model, x):
        self.calls += 1
        if self.ready is not None and self.calls >= 3:
            self.ready.write_text(str(os.getpid()))
            time.sleep(0.2)
        target = torch.stack([x.sum(-1), x[:, 0] - x[:, 1]], dim=-1)
        return ((model(x) - target) ** 2).mean(), {}


def config():
    from self_rewarding_lm_pytorch import TrainConfig

    return TrainConfig(num_train_steps=NUM_STEPS, batch_size=4, learning_rate=1e-2, log_every=1, progress=False)


def main(run_dir: Path, resume: bool):
    from self_rewarding_lm_pytorch import TrainingStopped, make_accelerator, train

    torch.set_num_threads(1)
    rank = os.environ.get("RANK", "0")
    model = make_model()
    ready = None if resume else run_dir.parent / f"ready-rank{rank}"
    # cpu=True alone: under `accelerate launch --multi_gpu` on a CPU machine this is two gloo processes
    accelerator = make_accelerator({"cpu": True})
    try:
        train(model, SlowTask(ready), make_data(), config(), accelerator=accelerator, run_dir=run_dir, resume=resume)
    except TrainingStopped as stopped:
        (run_dir.parent / f"stopped-rank{rank}").write_text(stopped.message)
        raise


if __name__ == "__main__":
    main(Path(sys.argv[1]), "--resume" in sys.argv)
