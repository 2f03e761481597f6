"""The training fields every stage config inherits, and the config as saved beside a checkpoint."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from self_rewarding_lm_pytorch.core.field_types import check_field_types, scalar_field_names
from self_rewarding_lm_pytorch.stages.walk import DESCEND, is_container, walk_config

__all__ = ["TrainingFields", "describe_config", "train_config_of"]


def _describe(value: Any) -> Any:
    """A JSON-able description of a config value: datasets and callables by what identifies them."""
    return walk_config(value, _describe_leaf)


def _describe_leaf(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, os.PathLike):
        return str(value)
    if isinstance(value, (list, tuple)) and len(value) > 16:
        # a dataset given as a list: describe, do not dump it into config.json
        return {"type": type(value).__name__, "len": len(value)}
    if is_container(value):
        return DESCEND
    if hasattr(value, "__len__") and hasattr(value, "__getitem__"):
        return {"type": type(value).__name__, "len": len(value)}
    if callable(value):
        return {"callable": getattr(value, "__qualname__", type(value).__name__)}
    return {"type": type(value).__name__}


def describe_config(config: Any) -> dict:
    """The resolved config as saved beside every stage checkpoint."""
    return {"kind": type(config).kind, **_describe(config)}


def train_config_of(config: Any, **overrides):
    """The loop's `TrainConfig` from a stage config's training fields (defaults live in TrainConfig)."""
    from self_rewarding_lm_pytorch.training.loop import TrainConfig

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {n: getattr(config, n) for n in names if hasattr(config, n)}
    values.update(overrides)
    return TrainConfig(**values)


@dataclass(frozen=True, kw_only=True)
class TrainingFields:
    """The loop's `TrainConfig` fields (keyword-only), shared by every training stage.

    Written out so IDEs and type checkers see them; `seed` and `progress` are the pipeline's to set.
    A unit test holds the names, types and defaults identical to TrainConfig's, so they cannot drift.
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
    tensorboard: bool = False
    disable_dropout: bool = True
    fsdp: bool = False
    gradient_checkpointing: bool = False

    def __post_init__(self):
        # Bad settings fail when the stage config is built, not when the stage starts, naming the
        # stage config: the type of every scalar field (the stage's own too), then the loop's ranges.
        check_field_types(self, names=scalar_field_names(type(self)))
        train_config_of(self)
