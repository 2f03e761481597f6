"""Where the training loop's records go: `run_dir/metrics.jsonl`, tensorboard, and the progress bar.

Apart from the loop (training/loop.py) because none of it affects training: the loop decides what
to record and when; `RunLog` only writes it. Files are written by the main process alone; the
progress bar exists on every process and shows only on the main one.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from self_rewarding_lm_pytorch.core.files import JsonlAppender
from self_rewarding_lm_pytorch.training.config import TrainConfig

__all__ = ["RunLog"]

log = logging.getLogger(__name__)


class RunLog:
    """The open outputs of one run; `close()` them when it ends, however it ends."""

    def __init__(
        self, run_dir: Path | None, config: TrainConfig, is_main: bool, total_steps: int, initial_step: int, desc: str
    ):
        self.appender: JsonlAppender | None = None
        self.tb: Any = None
        if is_main and run_dir is not None:
            self.appender = JsonlAppender(run_dir / "metrics.jsonl")
            if config.tensorboard:
                self.tb = _summary_writer(run_dir / "tensorboard")
        shown = config.progress and is_main
        self.bar = tqdm(total=total_steps, initial=initial_step, desc=desc, dynamic_ncols=True, disable=not shown)

    def write(self, record: dict) -> None:
        """One record (it has a "step") to metrics.jsonl and, its numbers, to tensorboard."""
        if self.appender is not None:
            self.appender.write(record)
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, record["step"])

    def show(self, values: dict[str, float], key_metric: str | None) -> None:
        """The latest loss, and the task's key metric when it has one, beside the progress bar."""
        postfix = {"loss": f"{values['loss']:.4f}"}
        if key_metric and key_metric != "loss" and key_metric in values:
            postfix[key_metric] = f"{values[key_metric]:.4g}"
        self.bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        for resource in (self.appender, self.tb, self.bar):
            if resource is not None:
                resource.close()


def _summary_writer(folder: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(folder))
    except ImportError:
        log.warning("tensorboard=True but torch.utils.tensorboard does not import; logging to metrics.jsonl only")
        return None
