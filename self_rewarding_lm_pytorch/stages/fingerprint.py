"""What identifies a stage config's effect on training, for the run manifest's stage hashes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from self_rewarding_lm_pytorch.core.field_types import is_added_field_at_default
from self_rewarding_lm_pytorch.stages.walk import DESCEND, is_container, walk_config

__all__ = ["fingerprint"]


def fingerprint(value: Any, skip: frozenset = frozenset()) -> Any:
    """What identifies a config value's effect on training, as JSON-able data for hashing.

    Lists, tensors and the files behind paths are read in full (an edited dataset is a different
    stage); a module's weights are summarised cheaply (see `_tensor_summary`); a map-style Dataset
    is known by type and length only, since datasets like `create_mock_dataset` draw anew on every
    access; a callable by its module and name.
    `skip` names dataclass fields left out (settings that do not change what is trained); fields declared
    with `ADDED_FIELD` metadata are left out at their default, so adding a setting does not orphan existing runs.
    """
    return walk_config(value, _fingerprint_leaf, skip=skip, drop_field=is_added_field_at_default)


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
        return {
            "module": type(value).__qualname__,
            "state": [_tensor_summary(k, t) for k, t in value.state_dict().items()],
        }
    if is_container(value):
        return DESCEND
    if hasattr(value, "__len__") and hasattr(value, "__getitem__"):
        return {"dataset": type(value).__qualname__, "len": len(value)}
    if callable(value):
        return {
            "callable": f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', type(value).__name__)}"
        }
    return {"type": type(value).__qualname__}


# Elements of each tensor read back to the host; everything else about a tensor is reduced on its device.
_SAMPLE_SIZE = 64


def _tensor_summary(name: str, tensor: Tensor) -> list:
    """A module tensor known by name, shape, dtype, float64 sum and L2 norm, and a strided sample of values.

    Why not hash the bytes: a 7B judge model in a stage config would be copied to the host and hashed
    (~14 GB) at every launch. The reductions run on the tensor's device, read each element once and
    copy nothing to the host but two numbers and the sample. Soundness: any change of a tensor's
    names, shapes or dtypes is caught; so is any change of values that moves the sum or the norm
    (one edited element, a training step, a re-initialisation, merged adapter weights, a rescale) in
    float64, i.e. every edit that is not an exact rearrangement. What it misses: a permutation of a
    tensor's values that leaves the sampled positions alone (say, two swapped rows between samples),
    or changes that cancel in both the sum and the norm to float64 precision.
    """
    t = tensor.detach()
    summary: list[Any] = [name, list(t.shape), str(t.dtype)]
    if t.numel() == 0:
        return summary
    t = torch.view_as_real(t) if t.is_complex() else t if t.is_floating_point() else t.to(torch.float64)
    flat = t.reshape(-1)
    k = min(_SAMPLE_SIZE, flat.numel())
    positions = torch.arange(k, device=flat.device) * (flat.numel() - 1) // max(k - 1, 1)  # exact in int64
    summary += [
        float(flat.sum(dtype=torch.float64)),
        float(torch.linalg.vector_norm(flat, dtype=torch.float64)),
        flat[positions].to(torch.float64).cpu().tolist(),
    ]
    return summary


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
