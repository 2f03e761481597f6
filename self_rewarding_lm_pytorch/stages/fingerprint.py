"""What identifies a stage config's effect on training, for the run manifest's stage hashes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from self_rewarding_lm_pytorch.stages.walk import DESCEND, is_container, walk_config

__all__ = ["fingerprint"]


def fingerprint(value: Any, skip: frozenset = frozenset()) -> Any:
    """What identifies a config value's effect on training, as JSON-able data for hashing.

    Lists, tensors, module weights and the files behind paths are read in full (an edited dataset
    is a different stage); a map-style Dataset is known by type and length only, since datasets
    like `create_mock_dataset` draw anew on every access; a callable by its module and name.
    `skip` names dataclass fields left out (settings that do not change what is trained).
    """
    return walk_config(value, _fingerprint_leaf, skip=skip)


def _fingerprint_leaf(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, (str, os.PathLike)):
        if isinstance(value, os.PathLike) or _is_file(value):
            path = Path(value)
            return {"file": str(value), "sha256": _sha256_file(path) if path.is_file() else None}
        return value
    if isinstance(value, Tensor):
        raw = value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        return {"tensor": hashlib.sha256(raw).hexdigest(), "dtype": str(value.dtype), "shape": list(value.shape)}
    if isinstance(value, nn.Module):
        return {"module": type(value).__qualname__, "state": fingerprint(list(value.state_dict().values()))}
    if is_container(value):
        return DESCEND
    if hasattr(value, "__len__") and hasattr(value, "__getitem__"):
        return {"dataset": type(value).__qualname__, "len": len(value)}
    if callable(value):
        return {
            "callable": f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', type(value).__name__)}"
        }
    return {"type": type(value).__qualname__}


def _is_file(text: str) -> bool:
    """Whether a string config value names a file (dataset paths are often given as plain strings)."""
    if "\n" in text or len(text) > 1024:
        return False
    try:
        return Path(text).is_file()
    except OSError:
        return False


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
