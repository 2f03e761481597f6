"""The shape check shared by the loss modules: inputs that pair up element by element must agree.

Broadcasting would silently turn a (b,) against a (b, 1) into a (b, b) loss, so every loss that
combines per-example or per-token tensors checks their shapes first.
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["check_same_shape"]


def check_same_shape(**tensors: Tensor) -> None:
    """Raise ValueError naming every input's shape unless they are all the same."""
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"inputs must have the same shape, got {shapes}")
