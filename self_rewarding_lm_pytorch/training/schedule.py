"""The loop's pure pieces of time: the learning-rate schedule and the deterministic data order.

Both are functions of the step alone, so a resumed run needs no hidden state to continue exactly.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from self_rewarding_lm_pytorch.core.seeding import derive_seed

__all__ = ["LR_SCHEDULES", "DataStream", "epoch_permutation", "lr_multiplier"]

LR_SCHEDULES = ("constant", "linear", "cosine")


def lr_multiplier(step: int, *, warmup_steps: int, total_steps: int, schedule: str) -> float:
    """LR factor for 0-based optimizer step `step`: warmup (step+1)/warmup_steps, then constant,
    or linear / cosine decay by progress p = (step - warmup) / (total - warmup): 1 - p, (1 + cos(pi p)) / 2.

    Warmup starts at lr/warmup (not 0, which would waste a step); decay reaches 0 only after the last step.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "linear":
        return 1.0 - progress
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown lr_schedule {schedule!r}; expected one of {LR_SCHEDULES}")


def epoch_permutation(seed: int, epoch: int, n: int) -> Tensor:
    """The item order of one epoch: a function of (seed, epoch) only, so resume needs no generator state."""
    generator = torch.Generator().manual_seed(derive_seed(seed, "epoch", epoch))
    return torch.randperm(n, generator=generator)


class DataStream:
    """Stream position k -> item index: epoch k // n, position k % n of that epoch's permutation."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self._epoch = n, seed, -1
        self._order: list[int] = []

    def take(self, start: int, count: int) -> list[int]:
        out = []
        for position in range(start, start + count):
            epoch, i = divmod(position, self.n)
            if epoch != self._epoch:
                self._epoch, self._order = epoch, epoch_permutation(self.seed, epoch, self.n).tolist()
            out.append(self._order[i])
        return out
