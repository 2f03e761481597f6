"""The one `Accelerator` per process and settings that every trainer and the pipeline share.

accelerate keeps a process-wide state, fixed by whatever created it first. A `PartialState()` or
`Accelerator()` made before the trainer without `cpu=True`, on a machine without GPUs, fixes it as one
non-distributed process even when the script was launched as several (measured with accelerate 1.15:
`DistributedType.NO`, process 0 of 1 in every process). Each process would then run the whole job as
its main process, racing the others on the same files; `make_accelerator` refuses that state instead.
"""

from __future__ import annotations

import os

from accelerate import Accelerator
from beartype import beartype

__all__ = ["LaunchMismatchError", "check_launch_matches", "make_accelerator"]

_ACCELERATORS: dict[str, Accelerator] = {}


class LaunchMismatchError(RuntimeError):
    """The launcher started N processes, but accelerate's process state in this process has another count."""


def check_launch_matches(launched: str | None, num_processes: int) -> None:
    """Raise `LaunchMismatchError` if the launcher's `WORLD_SIZE` (None: not launched) differs from the
    number of processes accelerate's state knows."""
    if launched is None or not launched.strip().isdigit() or int(launched) == num_processes:
        return
    raise LaunchMismatchError(
        f"this process was launched as one of {int(launched)} (WORLD_SIZE={launched}), but accelerate's "
        f"process state has {num_processes}: a PartialState() or Accelerator() created earlier in this "
        "process without cpu=True, on a machine without GPUs, made it a single process, and every process "
        "would run the whole job on its own. Create it with cpu=True (what accelerate_kwargs=dict(cpu=True) "
        "asks for), or let the trainer create it."
    )


@beartype
def make_accelerator(accelerate_kwargs: dict | None = None) -> Accelerator:
    """One `Accelerator` per process and settings, reused across stages.

    A second Accelerator with the same settings is fine, one with a different `mixed_precision` raises.
    Gradient accumulation is the loop's job (`TrainConfig.grad_accum_steps`), so
    `gradient_accumulation_steps` here is refused.
    """
    kwargs = dict(accelerate_kwargs or {})
    if kwargs.get("gradient_accumulation_steps", 1) != 1:
        raise ValueError(
            "set grad_accum_steps in the training config, not gradient_accumulation_steps in accelerate_kwargs"
        )
    key = repr(sorted(kwargs.items()))
    if key not in _ACCELERATORS:
        try:
            accelerator = Accelerator(**kwargs)
        except ValueError as e:
            raise ValueError(f"cannot create an Accelerator with {kwargs} in this process: {e}") from e
        check_launch_matches(os.environ.get("WORLD_SIZE"), accelerator.num_processes)
        _ACCELERATORS[key] = accelerator
    return _ACCELERATORS[key]
