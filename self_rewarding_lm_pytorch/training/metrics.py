"""Training metrics kept as tensors on device until log time: one stacked reduction per log window."""

from __future__ import annotations

import torch
from accelerate import Accelerator
from torch import Tensor

__all__ = ["MetricWindow", "as_metric"]


def as_metric(name: str, value, device) -> Tensor:
    if isinstance(value, (int, float)):
        return torch.tensor(float(value), device=device)
    if not isinstance(value, Tensor) or value.numel() != 1:
        raise ValueError(f"metric {name!r} must be a scalar tensor or number, got {type(value).__name__}")
    return value.detach().float().reshape(())


class MetricWindow:
    """Sums of scalar metric tensors on device; one stacked cross-process reduce per flush."""

    def __init__(self):
        self.sums: dict[str, Tensor] = {}
        self.steps = 0
        self.names: tuple[str, ...] | None = None

    def add(self, metrics: dict[str, Tensor]):
        """One optimizer step's metrics."""
        names = tuple(sorted(metrics))
        if self.names is not None and names != self.names:
            # Every process must reduce the same names in the same order, or the collective hangs.
            raise ValueError(f"a task must return the same metric names every step: {self.names} then {names}")
        self.names = names
        for name, value in metrics.items():
            self.sums[name] = self.sums.get(name, 0.0) + value
        self.steps += 1

    def flush(self, accelerator: Accelerator) -> dict[str, float]:
        if not self.steps:
            return {}
        names = sorted(self.sums)
        stacked = torch.stack([self.sums[n] for n in names]) / self.steps
        values = accelerator.reduce(stacked, reduction="mean").tolist()  # the one host sync per log
        self.sums, self.steps = {}, 0
        return dict(zip(names, values, strict=True))
