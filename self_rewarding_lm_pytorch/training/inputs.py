"""What `train` (training/loop.py) checks and builds before its first step: the task and datasets
it was given, and the optimizer.

Apart from the loop so that the loop reads as the steps it takes; PPO (rl/ppo.py) builds its
optimizer here too, so both trainers decay the same parameters.
"""

from __future__ import annotations

from typing import Any

import torch
from accelerate import Accelerator
from torch import nn

from self_rewarding_lm_pytorch.training.config import TrainConfig

__all__ = ["build_optimizer", "check_train_inputs"]


def check_train_inputs(
    task: Any, train_dataset: Any, valid_dataset: Any, config: TrainConfig, accelerator: Accelerator
):
    """Raise, before anything is built, on a task without the protocol's methods, an empty training set,
    a global batch the processes cannot split evenly, or a validation set smaller than the process count."""
    for name in ("collate", "step"):
        if not callable(getattr(task, name, None)):
            raise TypeError(
                f"the task {type(task).__name__} has no callable .{name}(); see the task protocol in loop.py"
            )
    nproc = accelerator.num_processes
    if len(train_dataset) == 0:
        raise ValueError("train_dataset is empty")
    if config.batch_size % nproc:
        raise ValueError(
            f"batch_size={config.batch_size} is the global batch per micro-step and must be "
            f"divisible by the number of processes ({nproc})"
        )
    if valid_dataset is not None and len(valid_dataset) < nproc:
        raise ValueError(f"valid_dataset has {len(valid_dataset)} items, fewer than the {nproc} processes")
    if accelerator.gradient_accumulation_steps != 1:
        raise ValueError("the Accelerator has gradient_accumulation_steps != 1; use TrainConfig.grad_accum_steps")


def build_optimizer(model: nn.Module, config: TrainConfig) -> tuple[torch.optim.Optimizer, list[nn.Parameter]]:
    """AdamW over trainable parameters only; weight decay on matrices, not on biases/norm gains."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters (requires_grad=True)")
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=config.learning_rate)
    return optimizer, params
