"""Cost of the loop's per-step check (non-finite loss + agreed stop flag: one host sync per optimizer step).

Trains the same tiny SFT-sized model with the check and with it replaced by a no-op, interleaved
(A B A B ...) so machine load hits both alike; prints the median seconds per optimizer step and the ratio.
Usage: python bench/step_check.py [--steps 60] [--rounds 5]
"""

import argparse
import statistics
import time

import torch
from x_transformers import Decoder, TransformerWrapper

from self_rewarding_lm_pytorch import TrainConfig, make_accelerator, train
from self_rewarding_lm_pytorch.training import loop


class LMTask:
    def collate(self, items):
        return torch.stack(items)

    def step(self, model, ids):
        logits = model(ids[:, :-1])
        return torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:]), {}


def seconds_per_step(steps: int, checked: bool) -> float:
    torch.manual_seed(0)
    model = TransformerWrapper(num_tokens=259, max_seq_len=64, attn_layers=Decoder(dim=64, depth=2, heads=4))
    data = [torch.randint(0, 256, (64,)) for _ in range(64)]
    original = loop._Run._check_before_update
    if not checked:
        loop._Run._check_before_update = lambda self, metrics: None
    try:
        config = TrainConfig(num_train_steps=steps, batch_size=8, log_every=10, progress=False)
        start = time.perf_counter()
        train(model, LMTask(), data, config, accelerator=make_accelerator({"cpu": True}))
        return (time.perf_counter() - start) / steps
    finally:
        loop._Run._check_before_update = original


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    seconds_per_step(5, True)  # warm-up
    with_check, without = [], []
    for _ in range(args.rounds):
        with_check.append(seconds_per_step(args.steps, True))
        without.append(seconds_per_step(args.steps, False))
    a, b = statistics.median(with_check), statistics.median(without)
    print(f"dim 64, depth 2, batch 8 x 63 tokens, CPU 1 thread, {args.steps} steps x {args.rounds} rounds")
    print(f"with the check:    {a * 1e3:.2f} ms/step (median)")
    print(f"without the check: {b * 1e3:.2f} ms/step (median)")
    print(f"ratio: {a / b:.3f}")


if __name__ == "__main__":
    main()
