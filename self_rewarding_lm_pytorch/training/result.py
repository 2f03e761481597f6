"""`TrainResult`: what one call of `train` (training/loop.py) hands back.

Apart from the loop so that trainers and stages can name the type without reading the loop itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["TrainResult"]


@dataclass
class TrainResult:
    """What `train` did: optimizer `steps` completed (in total, across resumes), every logged record
    (`history`: train records and validation records with "valid/" keys), and the best validation."""

    steps: int
    history: list[dict] = field(default_factory=list)
    best_metrics: dict | None = None
    best_step: int | None = None
    stopped_early: bool = False
    run_dir: Path | None = None
    info: dict = field(default_factory=dict)  # stage-specific extras, e.g. SFT's "num_skipped"
