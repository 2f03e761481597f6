"""What every pipeline stage shares: the context it runs in, dataset resolution, config description.

A stage config is a frozen dataclass with a class attribute `kind` (its folder name) and a method
`run(ctx) -> dict` that trains `ctx.model` in place and returns a JSON-able summary. Stages are
plain data until `run` is called: building one does no I/O and touches no model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..data import ListDataset, read_records

__all__ = [
    "StageContext",
    "StageEnd",
    "TrainingFields",
    "resolve_dataset",
    "describe_config",
    "fingerprint",
    "train_config_of",
]


@dataclass
class StageContext:
    """Everything a stage needs from the pipeline. The stage trains `model` in place."""

    model: nn.Module
    tokenizer: Any
    accelerator: Any
    stage_dir: Path
    seed: int
    resume: bool
    reward_config: Any
    progress: bool = True

    @property
    def is_main(self) -> bool:
        return self.accelerator is None or self.accelerator.is_main_process


@dataclass
class StageEnd:
    """What `on_stage_end` callbacks receive after each finished stage."""

    index: int
    config: Any
    model: nn.Module
    stage_dir: Path
    summary: dict


def resolve_dataset(data: Any, *, name: str = "dataset") -> Dataset:
    """A Dataset from a Dataset, a list/tuple, or a path to a JSONL (or JSON list) file."""
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if not path.exists():
            raise FileNotFoundError(f"{name}: no such file {path}")
        return ListDataset(read_records(path)[0])
    if isinstance(data, (list, tuple)):
        return ListDataset(data)
    if isinstance(data, Dataset) or (hasattr(data, "__len__") and hasattr(data, "__getitem__")):
        return data
    raise TypeError(f"{name} must be a Dataset, a list or a JSONL path, got {type(data).__name__}")


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


def fingerprint(value: Any, skip: frozenset = frozenset()) -> Any:
    """What identifies a config value's effect on training, as JSON-able data for hashing.

    Lists, tensors, module weights and the files behind paths are read in full (an edited dataset
    is a different stage); a map-style Dataset is known by type and length only, since datasets
    like `create_mock_dataset` draw anew on every access; a callable by its module and name.
    `skip` names dataclass fields left out (settings that do not change what is trained).
    """
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
    if isinstance(value, (list, tuple)):
        return [fingerprint(v) for v in value]
    if isinstance(value, dict):
        return {str(k): fingerprint(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: fingerprint(getattr(value, f.name)) for f in dataclasses.fields(value) if f.name not in skip}
    if hasattr(value, "__len__") and hasattr(value, "__getitem__"):
        return {"dataset": type(value).__qualname__, "len": len(value)}
    if callable(value):
        return {"callable": f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', type(value).__name__)}"}
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


def train_config_of(config: Any, **overrides):
    """The loop's `TrainConfig` from a stage config's training fields (defaults live in TrainConfig)."""
    from ..loop import TrainConfig

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

    from ..loop import TrainConfig

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
