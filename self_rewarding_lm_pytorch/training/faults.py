"""What the training loop does when a run is stopped (SIGTERM, SIGINT) or diverges (a non-finite loss).

A scheduler pre-empts a job with SIGTERM and gives it seconds; Ctrl-C is SIGINT. `StopSignals`
turns either into a flag the loop reads at the next optimizer-step boundary, where it writes a step
checkpoint and exits (non-zero), so a rerun with resume continues from that step. A second signal of
the same kind while the first is handled acts at once, as it would without the handler.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import torch
from accelerate import Accelerator
from torch import Tensor

__all__ = ["NonFiniteLossError", "StopSignals", "TrainingStopped", "agreed_step_flags"]

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class NonFiniteLossError(RuntimeError):
    """A loss or gradient norm was NaN or infinite; raised before the optimizer step that would apply it."""


class TrainingStopped(SystemExit):
    """Training stopped on a signal after writing a step checkpoint; exits with status 128 + signal number
    (the shell's convention), so a scheduler sees the job did not finish."""

    def __init__(self, signum: int, message: str):
        super().__init__(128 + signum)
        self.signum, self.message = signum, message

    def __str__(self) -> str:
        return self.message


class StopSignals:
    """Within `with StopSignals() as stop:`, SIGTERM/SIGINT set `stop.signum` instead of killing the process.

    Handlers can only be installed from the main thread; elsewhere this does nothing (signals keep
    their usual effect). The previous handlers are restored on exit.
    """

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}  # what signal.signal returned: a handler, SIG_DFL or None

    def _handle(self, signum, frame):
        if self.signum == signum:  # asked twice: stop now, the way the signal would without us
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            signal.raise_signal(signum)
            return
        self.signum = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in _STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


def agreed_step_flags(step_metrics: dict[str, Tensor], *, stop_requested: bool, accelerator: Accelerator) -> list[bool]:
    """[any process saw a non-finite loss or gradient norm, any process was asked to stop], agreed by all.

    One host sync per optimizer step, on purpose: a NaN/inf must be seen before optimizer.step()
    applies it (afterwards every weight, checkpoint and later stage would carry it), and all
    processes must stop at the same step. Both flags travel in one tensor and one reduction; on
    tiny models this costs about as much as the logging already does every step.
    """
    watched = [step_metrics["loss"]] + ([step_metrics["grad_norm"]] if "grad_norm" in step_metrics else [])
    nonfinite = (~torch.isfinite(torch.stack(watched))).any().float()
    stop = torch.tensor(float(stop_requested), device=nonfinite.device)
    flags = torch.stack([nonfinite, stop])
    if accelerator.num_processes > 1:
        flags = accelerator.reduce(flags, reduction="sum")
    return (flags > 0).tolist()
