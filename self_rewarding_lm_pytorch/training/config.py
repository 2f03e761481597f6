"""`TrainConfig`: every setting of the training loop, validated at construction.

Stage configs inherit these fields (see `stages.base.TrainingFields`), so the defaults live here only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from self_rewarding_lm_pytorch.core.field_types import check_field_types
from self_rewarding_lm_pytorch.training.schedule import LR_SCHEDULES

__all__ = ["TrainConfig"]


@dataclass(frozen=True)
class TrainConfig:
    """Everything the loop needs; defaults live here only.

    Length of training: `num_epochs` over the dataset actually given, `num_train_steps` alone, or
    both, when `num_train_steps` is an upper bound on the epochs' steps (a preference stage makes
    tens to thousands of pairs, so a fixed step count is 0.1 epoch of one and 20 of another).
    Neither -> one epoch.
    """

    num_train_steps: int | None = None
    num_epochs: float | None = None
    batch_size: int = 8
    grad_accum_steps: int = 1
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_schedule: str = "constant"
    max_grad_norm: float | None = 1.0
    log_every: int = 10
    valid_every: int | None = None
    early_stopping_patience: int | None = None
    early_stopping_metric: str = "loss"
    early_stopping_mode: str = "min"
    checkpoint_every: int | None = None
    seed: int = 0
    progress: bool = True
    tensorboard: bool = False
    # TRL's name and default: dropout off in the policy while it trains, the model's rates restored after
    # (see training.dropout). Pair losses compare with a dropout-free reference; set False to keep it on.
    disable_dropout: bool = True
    fsdp: bool = False  # shard parameters, gradients and Adam state over the processes (FSDP2)
    gradient_checkpointing: bool = False  # recompute activations in backward (Hugging Face models)

    def __post_init__(self):
        check_field_types(self)  # types by beartype; the values' ranges below

        def check(ok: bool, message: str):
            if not ok:
                raise ValueError(f"TrainConfig: {message}")

        for name in ("batch_size", "grad_accum_steps", "log_every"):
            check(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("num_train_steps", "valid_every", "checkpoint_every", "early_stopping_patience"):
            value = getattr(self, name)
            check(value is None or value >= 1, f"{name} must be None or >= 1, got {value!r}")
        check(self.num_epochs is None or self.num_epochs > 0, f"num_epochs must be > 0, got {self.num_epochs}")
        check(self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}")
        check(self.learning_rate > 0 and self.weight_decay >= 0, "learning_rate must be > 0 and weight_decay >= 0")
        check(self.max_grad_norm is None or self.max_grad_norm >= 0, "max_grad_norm must be None or >= 0")
        check(self.lr_schedule in LR_SCHEDULES, f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        check(self.early_stopping_mode in ("min", "max"), "early_stopping_mode must be 'min' or 'max'")
        check(self.seed >= 0, f"seed must be >= 0, got {self.seed!r}")
        check(
            self.early_stopping_patience is None or self.valid_every is not None,
            "early_stopping_patience needs valid_every (how often to validate)",
        )

    def to_kwargs(self) -> dict:
        """The fields as keyword arguments, for the trainers that take `**train_config`."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def total_steps(self, num_items: int) -> int:
        """Optimizer steps for a dataset of `num_items`: epochs rounded up, capped by num_train_steps."""
        if self.num_epochs is None and self.num_train_steps is not None:
            return self.num_train_steps
        epochs = 1 if self.num_epochs is None else self.num_epochs
        steps = max(1, math.ceil(epochs * num_items / (self.batch_size * self.grad_accum_steps)))
        return steps if self.num_train_steps is None else min(steps, self.num_train_steps)
