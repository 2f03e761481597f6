"""The training loop's step checkpoints across processes: who writes what, and when everyone waits.

training/checkpoint.py writes and reads one step folder; this module is the glue the loop
(training/loop.py) needs around it with several processes: every process's RNG state goes into
the one folder the main process writes, a sharded run adds each process's optimizer shard, and
every process leaves a save or a resume only once all of them have finished it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.utils import gather_object
from torch import nn

from self_rewarding_lm_pytorch.training import checkpoint as ckpt
from self_rewarding_lm_pytorch.training.checkpoint import RunState
from self_rewarding_lm_pytorch.training.sharding import OPTIMIZER_DIR, ShardedTraining

__all__ = ["RunCheckpoints"]


class RunCheckpoints:
    """Step checkpoints of one run in `run_dir/checkpoint/`; `config_record` is saved with each one
    and compared on resume (settings the data order depends on must not change)."""

    def __init__(
        self, run_dir: Path, accelerator: Accelerator, config_record: dict, sharded: ShardedTraining | None = None
    ):
        self.run_dir, self.acc, self.config_record, self.sharded = run_dir, accelerator, config_record, sharded
        self.is_main, self.nproc = accelerator.is_main_process, accelerator.num_processes

    def resume(self, *, model: nn.Module, optimizer: Any, scheduler: Any) -> RunState | None:
        """Restore model, optimizer, scheduler and this process's RNG from the latest checkpoint and
        return its counters, or None when there is none (a fresh start)."""
        path = ckpt.latest_checkpoint(self.run_dir)
        if path is None:
            return None
        state, rngs = ckpt.load_run_checkpoint(
            path,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            config_now=self.config_record,
            sharded=self.sharded,
        )
        ckpt.set_rng_state(rngs[self.acc.process_index])
        if self.is_main:
            ckpt.truncate_metrics(self.run_dir / "metrics.jsonl", state.step)  # the resumed run logs them again
        self.acc.wait_for_everyone()
        return state

    def save(
        self,
        state: RunState,
        *,
        model: nn.Module,
        optimizer: Any,
        scheduler: Any,
        items_per_step: int,
        dataset_size: int,
    ) -> None:
        """A step checkpoint of `state` (every process calls this; `model` is the unwrapped model)."""
        rng = ckpt.get_rng_state()
        # Every process's RNG goes into the one checkpoint the main process writes.
        rngs = gather_object([rng]) if self.nproc > 1 else [rng]
        record = dict(
            scheduler=scheduler,
            rng_states=rngs,
            config=self.config_record,
            items_per_step=items_per_step,
            dataset_size=dataset_size,
        )
        if self.sharded is None:
            if self.is_main:
                ckpt.save_run_checkpoint(self.run_dir, state, model=model, optimizer=optimizer, **record)
        else:
            self._save_sharded(state, optimizer, record)
        self.acc.wait_for_everyone()

    def _save_sharded(self, state: RunState, optimizer: Any, record: dict) -> None:
        """Full weights from the main process, optimizer shards from every process, into one staging folder."""
        assert self.sharded is not None  # only called so
        full = self.sharded.full_state_dict(all_ranks=False)
        staging = ckpt.staging_dir(self.run_dir, state.step)
        if self.is_main:
            ckpt.clear_staging(staging)
        self.acc.wait_for_everyone()
        self.sharded.save_optimizer(optimizer, staging / OPTIMIZER_DIR)
        self.acc.wait_for_everyone()
        if self.is_main:
            with self.sharded.full_core(full) as core:
                ckpt.save_run_checkpoint(self.run_dir, state, model=core, optimizer=None, staging=staging, **record)
