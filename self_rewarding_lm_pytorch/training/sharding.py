"""Sharded training with PyTorch FSDP2 (`torch.distributed.fsdp.fully_shard`) for the one loop.

How it works (a choice, and why):

- The loop trains a *sharded copy* of the user's model. The copy is built on the meta device (no
  memory), sharded per transformer block and at the root, then filled with this process's slice of
  the weights; the user's model then lends its parameter storage away (each parameter keeps its
  identity, ties and `requires_grad`, but holds an empty tensor). So while training, a process holds
  1/N of the parameters, gradients and Adam state.
- When training ends the full weights are gathered on every process and put back into the user's
  model, which is a plain module again. Everything between stages (generation, reference
  log-probs, a frozen reference copy, saving) runs on that plain model as it does without FSDP:
  generation is split across processes, each holding the full weights once, with no collective per
  decoded token (running the sampler under FSDP would all-gather the whole model for every token,
  and processes that decode different lengths would deadlock).
- A step checkpoint holds full weights (`model.safetensors`, written by the main process, the same
  file a one-process run writes) and the sharded optimizer state, written by every process with
  `torch.distributed.checkpoint` into `optimizer/`.

Works on CPU with gloo (all-gather and reduce-scatter are supported there in torch 2.13) and on GPUs
with NCCL. With one process `fsdp=True` is a no-op with a warning.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

__all__ = [
    "OPTIMIZER_DIR",
    "ShardedTraining",
    "fsdp_enabled",
    "local_parameter_count",
    "shard_in_place",
    "transformer_blocks",
]

log = logging.getLogger(__name__)

OPTIMIZER_DIR = "optimizer"  # the sharded optimizer state inside a step checkpoint folder
_BLOCK_LISTS = ("layers", "h", "blocks")  # x-transformers / HF Llama-style, GPT-2 style, others
_CONTAINERS = (nn.ModuleList, nn.ModuleDict, nn.Sequential)
_PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16}


def fsdp_enabled(fsdp: bool, num_processes: int) -> bool:
    """True when the loop should shard: `fsdp=True` and more than one process (else a warning)."""
    if fsdp and num_processes == 1:
        warnings.warn("fsdp=True with one process: nothing to shard, training unsharded", stacklevel=3)
    return fsdp and num_processes > 1


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The modules to shard one by one: the entries of the first block list found in `model`.

    x-transformers keeps its blocks in `attn_layers.layers`, each entry a container
    `[norms, attention-or-feedforward, residual]` without a forward of its own (FSDP2 only shards
    modules that run forward), so the sharded unit is the entry's attention or feedforward module.
    Hugging Face decoders keep theirs in `model.layers` (Llama, Mistral, Qwen) or `transformer.h`
    (GPT-2); each entry is a decoder layer with a forward. Wrappers (PEFT, value heads, reward
    models) are searched through, since the search walks every submodule.
    """
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.rsplit(".", 1)[-1] in _BLOCK_LISTS:
            return [unit for entry in module for unit in _forward_units(entry)]
    return []


def _forward_units(entry: nn.Module) -> list[nn.Module]:
    if not isinstance(entry, _CONTAINERS):
        return [entry]
    # The entry's own sub-containers (x-transformers' norms) are tiny: they stay with the root.
    return [
        child
        for child in entry.children()
        if not isinstance(child, _CONTAINERS) and any(True for _ in child.parameters())
    ]


def shard_in_place(module: nn.Module, *, mixed_precision: str = "no") -> nn.Module:
    """`fully_shard` each transformer block of `module`, then its root; returns `module`, now sharded.

    Also used alone for a frozen reference model, which then costs 1/N of its size per process (its
    forward is a collective, run in step by every process).
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    dtype = _PRECISIONS.get(mixed_precision)
    # Parameters are cast for compute only; gradients are reduced and Adam runs in float32.
    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32 if dtype else None)
    blocks = transformer_blocks(module)
    if not blocks:
        log.warning("fsdp: no transformer block list found in %s; sharding it as one unit", type(module).__name__)
    for block in blocks:
        fully_shard(block, mp_policy=policy)
    fully_shard(module, mp_policy=policy)
    return module


def local_parameter_count(module: nn.Module) -> int:
    """Parameter elements this process holds (its shards under FSDP, everything otherwise)."""
    total = 0
    for p in module.parameters():
        local = p.to_local() if hasattr(p, "to_local") else p
        total += local.numel()
    return total


class ShardedTraining:
    """The user's model `core` and `module`, its FSDP2-sharded training copy (see the module docstring).

    Every method that gathers or scatters weights is a collective: all processes call it together.
    """

    def __init__(self, core: nn.Module, *, device: torch.device, mixed_precision: str = "no"):
        self.core = core.to(device)
        self._params = dict(core.named_parameters())  # deduplicated: a tied weight appears once
        self._lent: dict[str, tuple[torch.Size, torch.dtype]] = {}
        # nn.Module and FSDPModule at once (its class is swapped); Any, as no static type says both.
        self.module: Any = shard_in_place(_meta_copy(core), mixed_precision=mixed_precision)
        self.module.to_empty(device=device)
        for name, buffer in core.named_buffers():
            self.module.get_buffer(name).copy_(buffer)
        self.load_full(core.state_dict())
        self._lend()

    # --- the user's model lends its storage while the shards train ---

    def _lend(self):
        for name, p in self._params.items():
            self._lent[name] = (p.shape, p.dtype)
            p.data = torch.empty(0, dtype=p.dtype, device=p.device)

    @contextmanager
    def full_core(self, state_dict: dict[str, Tensor]) -> Iterator[nn.Module]:
        """The user's model holding `state_dict` (full weights) for the duration; no collective."""
        for name, p in self._params.items():
            p.data = state_dict[name].to(p.device, p.dtype)
        try:
            yield self.core
        finally:
            self._lend()

    @contextmanager
    def gathered_core(self) -> Iterator[nn.Module]:
        """The user's model holding the current full weights for the duration (gathering is a collective).

        For a trainer that samples between steps (PPO): the weights are gathered on the device, one
        parameter at a time, and freed again on exit.
        """
        self.restore_core()
        try:
            yield self.core
        finally:
            self._lend()

    def empty_core(self) -> nn.Module:
        """The user's model with uninitialised full-size storage, to load a weights file into."""
        for name, p in self._params.items():
            shape, dtype = self._lent[name]
            p.data = torch.empty(shape, dtype=dtype, device=p.device)
        return self.core

    def restore_core(self):
        """Gather the trained weights and put them back into the user's model, for good (collective).

        One parameter at a time (every process in the same order), so no second full copy is made.
        """
        shards = dict(self.module.named_parameters())
        for name, p in self._params.items():
            shard = shards[name]
            full = shard.full_tensor() if hasattr(shard, "full_tensor") else shard
            # A copy: the gathered tensor may be a view into a padded buffer (safetensors refuses those).
            p.data = full.detach().to(p.device, p.dtype, copy=True)
        self._lent.clear()

    # --- weights and optimizer state (collectives) ---

    def full_state_dict(self, *, all_ranks: bool) -> dict[str, Tensor]:
        """The full weights, on CPU; with `all_ranks=False` only the main process gets them (others: {})."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=not all_ranks)
        state = get_model_state_dict(self.module, options=options)
        return {k: cast(Tensor, v).detach().to("cpu", copy=True) for k, v in state.items()}

    def load_full(self, state_dict: dict[str, Tensor]):
        """Scatter full weights (every process passes the same) into the shards."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        full = cast(dict[str, Any], state_dict)
        set_model_state_dict(self.module, full, options=StateDictOptions(full_state_dict=True))

    def load_full_file(self, path: Path):
        """Load a `model.safetensors` written from the full model (ties as `save_model` stores them)."""
        from self_rewarding_lm_pytorch.training.checkpoint import load_model

        core = load_model(self.empty_core(), path)
        try:
            self.load_full(core.state_dict())
        finally:
            self._lend()

    def save_optimizer(self, optimizer: torch.optim.Optimizer, folder: Path):
        """Every process writes its optimizer shard into `folder` (torch.distributed.checkpoint)."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        dcp.save(get_optimizer_state_dict(self.module, optimizer), checkpoint_id=str(folder))

    def load_optimizer(self, optimizer: torch.optim.Optimizer, folder: Path):
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

        # The template (with Adam's state allocated) tells DCP which slice each process reads.
        state = get_optimizer_state_dict(self.module, optimizer)
        dcp.load(state, checkpoint_id=str(folder))
        set_optimizer_state_dict(self.module, optimizer, optim_state_dict=state)

    # --- the training step ---

    @contextmanager
    def no_gradient_sync(self) -> Iterator[None]:
        """Accumulate gradients locally (no reduce-scatter) until the last micro-batch."""
        self.module.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            self.module.set_requires_gradient_sync(True)

    @staticmethod
    def clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> Tensor:
        """Clip by the global gradient norm over all shards; returns that norm as a plain tensor."""
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def _meta_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` whose parameters and buffers live on the meta device (nothing is allocated).

    The deepcopy memo maps each tensor to a meta twin, so tied weights stay tied in the copy.
    """
    memo: dict[int, object] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    return copy.deepcopy(model, memo)
