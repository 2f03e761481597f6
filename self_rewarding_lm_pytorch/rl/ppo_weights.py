"""Where PPO's trained weights live and how they persist: the trained module with its optimizer (DDP-
prepared, or FSDP2 shards), and the step checkpoints holding weights, optimizer state and every
process's PPO state.

Split from `rl.ppo` because each of these branches on the same question, whether the weights are
sharded (then the model file is gathered for the main process while each process writes its
optimizer shard), and that bookkeeping is no part of a PPO step. Every process calls each function.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from self_rewarding_lm_pytorch.models import AdapterOffReference, AdapterSnapshotReference
from self_rewarding_lm_pytorch.rl.ppo_config import PPOConfig
from self_rewarding_lm_pytorch.training.checkpoint import (
    CHECKPOINT_DIR,
    clear_staging,
    load_training_state,
    save_training_state,
    staging_dir,
)
from self_rewarding_lm_pytorch.training.sharding import OPTIMIZER_DIR, ShardedTraining, fsdp_enabled, shard_in_place

__all__ = ["load_ppo_checkpoint", "prepare_trained_module", "save_ppo_checkpoint"]


def prepare_trained_module(
    core: nn.Module,
    ref_model: nn.Module,
    *,
    is_own_reference: bool,
    config: PPOConfig,
    accelerator: Any,
    build_optimizer: Callable[..., tuple[Any, Any]],
) -> tuple[nn.Module, Any, Any, ShardedTraining | None]:
    """(model, optimizer, params, sharded): the trained module (DDP-prepared, or FSDP2 shards of `core`,
    then `sharded` is not None) and its optimizer over `params`. Under fsdp a reference the trainer
    made (`is_own_reference`) is sharded in place like the policy. `build_optimizer(module, config)`
    returns (optimizer, params), as the training loop builds them."""
    acc = accelerator
    if not fsdp_enabled(config.fsdp, acc.num_processes):
        optimizer, params = build_optimizer(core, config)
        model, optimizer = acc.prepare(core, optimizer)
        return model, optimizer, params, None
    if is_own_reference:
        if isinstance(ref_model, (AdapterOffReference, AdapterSnapshotReference)):
            # that view reads the policy's own base weights, which the shards hold while training
            raise ValueError("PPOConfig.fsdp=True with a LoRA policy needs a ref_model (not supported yet)")
        # As DPO does: our own copy is sharded like the policy (its forward then runs in step on every
        # process); a reference you pass is left whole.
        shard_in_place(ref_model, mixed_precision=acc.mixed_precision)
    # No accelerate.prepare: the shards replace DDP, and the optimizer sees only this process's slices.
    sharded = ShardedTraining(core, device=acc.device, mixed_precision=acc.mixed_precision)
    optimizer, params = build_optimizer(sharded.module, config)
    return sharded.module, optimizer, params, sharded


def save_ppo_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    *,
    core: nn.Module,
    optimizer: Any,
    sharded: ShardedTraining | None,
    accelerator: Any,
    ppo_state: dict,
    state: dict,
    config: dict,
) -> None:
    """Write `run_dir/checkpoint/step-*/`: full weights (the main process), optimizer state (under fsdp,
    `sharded` not None, every process writing its shard with torch.distributed.checkpoint), `state`
    plus every process's `ppo_state` (each samples and shuffles with its own generators)."""
    from accelerate.utils import gather_object

    acc, root = accelerator, Path(run_dir) / CHECKPOINT_DIR
    state = {**state, "ppo": gather_object([ppo_state]) if acc.num_processes > 1 else [ppo_state]}
    if sharded is None:
        if acc.is_main_process:
            save_training_state(root, step, model=core, optimizer=optimizer, state=state, config=config)
    else:
        full = sharded.full_state_dict(all_ranks=False)
        staging = staging_dir(run_dir, step)
        if acc.is_main_process:
            clear_staging(staging)
        acc.wait_for_everyone()
        sharded.save_optimizer(optimizer, staging / OPTIMIZER_DIR)
        acc.wait_for_everyone()
        if acc.is_main_process:
            with sharded.full_core(full) as full_core:
                save_training_state(
                    root, step, model=full_core, optimizer=None, state=state, config=config, staging=staging
                )
    acc.wait_for_everyone()


def load_ppo_checkpoint(
    path: str | os.PathLike, *, core: nn.Module, optimizer: Any, sharded: ShardedTraining | None, accelerator: Any
) -> tuple[dict, dict]:
    """Restore weights and optimizer from a step folder; returns its state and this process's PPO state."""
    path, acc = Path(path), accelerator
    if sharded is None:
        state = load_training_state(path, model=core, optimizer=optimizer)
    else:
        state = load_training_state(path, model=None)
        if not (path / OPTIMIZER_DIR / ".metadata").is_file():
            raise ValueError(f"cannot resume sharded PPO from {path}: it holds no sharded optimizer state")
        sharded.load_full_file(path / "model.safetensors")
        sharded.load_optimizer(optimizer, path / OPTIMIZER_DIR)
    saved = state["ppo"]
    if isinstance(saved, dict):  # written by one process before the per-process list
        saved = [saved]
    if len(saved) != acc.num_processes:
        raise ValueError(f"{path} was written by {len(saved)} process(es), not {acc.num_processes}: resume as it ran")
    return state, saved[acc.process_index]
