"""The training fields every stage config inherits, and the config as saved beside a checkpoint."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

__all__ = ["TrainingFields", "describe_config", "train_config_of"]


def _describe(value: Any) -> Any:
    """A JSON-able description of a config value: datasets and callables by what identifies them."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, os.PathLike):
        return str(value)
    if isinstance(value, (list, tuple)):
        if len(value) > 16:  # a dataset given as a list: describe, do not dump it into config.json
            return {"type": type(value).__name__, "len": len(value)}
        return [_describe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _describe(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _describe(getattr(value, f.name)) for f in dataclasses.fields(value)}
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


def _training_fields():
    """TrainConfig's fields as keyword-only fields with its defaults, for stage configs to inherit.

    Built from TrainConfig itself so the defaults live in one place. `seed` and `progress` are the
    pipeline's to set, so stages do not carry them.
    """
    import typing

    from self_rewarding_lm_pytorch.training.loop import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    cls = dataclasses.make_dataclass(
        "TrainingFields",
        [
            (f.name, hints[f.name], dataclasses.field(default=f.default, kw_only=True))
            for f in dataclasses.fields(TrainConfig)
            if f.name not in ("seed", "progress")
        ],
        frozen=True,
        namespace={
            "__doc__": "The loop's TrainConfig fields (keyword-only), shared by every training stage.",
            # Bad training settings fail when the stage config is built, not when the stage starts.
            "__post_init__": lambda self: train_config_of(self) and None,
        },
    )
    cls.__module__, cls.__qualname__ = __name__, "TrainingFields"  # importable, so picklable
    return cls


TrainingFields = _training_fields()
