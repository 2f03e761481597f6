"""What a stage receives from the pipeline when it runs, and how it resolves the datasets it names.

A stage config is a frozen dataclass with a class attribute `kind` (its folder name) and a method
`run(ctx) -> dict` that trains `ctx.model` in place and returns a JSON-able summary. Stages are
plain data until `run` is called: building one does no I/O and touches no model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from self_rewarding_lm_pytorch.core.batching import ListDataset, SizedDataset
from self_rewarding_lm_pytorch.core.files import read_records

__all__ = ["StageContext", "StageEnd", "resolve_dataset"]


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


def resolve_dataset(data: Any, *, name: str = "dataset") -> SizedDataset:
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
