"""Turning a model's dropout off for preference and RL training (TRL's `disable_dropout`).

DPO, SPIN and PPO compare the policy's log-probs with a reference's (or with the policy's own at
rollout time) taken without dropout: with dropout on in the policy's pass, the implicit reward and the
PPO ratio start away from their exact values (the step-0 DPO loss is not log 2) and are noisy after.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

__all__ = ["disable_dropout", "dropout_disabled", "restore_dropout"]


def disable_dropout(model: nn.Module) -> list[tuple[Any, str, Any]]:
    """Set every dropout rate in `model` to 0, in place; returns what `restore_dropout` needs to undo it.

    Covers dropout modules (`p`) and the plain float rates some attention code hands to
    `scaled_dot_product_attention` (x-transformers' `Attend.dropout`, Hugging Face's
    `attention_dropout`, x-transformers' `layer_dropouts` tuple): any module attribute whose name
    contains "dropout" and holds a float or a tuple of floats.
    """
    changed: list[tuple[Any, str, Any]] = []
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            changed.append((module, "p", module.p))
            module.p = 0.0
            continue
        for name, value in list(vars(module).items()):
            if "dropout" not in name:
                continue
            if isinstance(value, float) and value != 0.0:
                changed.append((module, name, value))
                setattr(module, name, 0.0)
            elif isinstance(value, tuple) and value and all(isinstance(v, float) for v in value) and any(value):
                changed.append((module, name, value))
                setattr(module, name, tuple(0.0 for _ in value))
    return changed


def restore_dropout(changed: list[tuple[Any, str, Any]]) -> None:
    for module, name, value in reversed(changed):
        setattr(module, name, value)


@contextmanager
def dropout_disabled(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Dropout off inside the block (when `enabled`), the model's own rates restored after."""
    changed = disable_dropout(model) if enabled else []
    try:
        yield
    finally:
        restore_dropout(changed)
