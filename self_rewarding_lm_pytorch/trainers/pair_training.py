"""Training on pairs, shared by DPO and SPIN: the loop's pair task and the reference it is measured against.

Shapes: b pairs in a batch. A batch holds 2b rows, the b chosen (or real) sequences then the b rejected
(or generated) ones, right padded, so both go through the policy in one forward pass.

- `PairTask`: one step of any pair loss (DPO's family, SPIN's) with RPO's optional NLL term and the
  judge examples mixed in (`trainers.judge_mixing`); `DPOTask` binds a `PreferenceLoss`.
- `train_pairs`: the reference as log-probs computed once (the default) or as a live frozen view, then
  the one training loop.
- `check_live_reference_shardable`: a LoRA policy's live reference cannot run sharded.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import torch
from torch import Tensor, nn

from self_rewarding_lm_pytorch.core.batching import ListDataset
from self_rewarding_lm_pytorch.core.losses import sft_loss
from self_rewarding_lm_pytorch.models import frozen_reference
from self_rewarding_lm_pytorch.models.base import (
    AdapterOffReference,
    AdapterSnapshotReference,
    live_reference_reads_policy,
)
from self_rewarding_lm_pytorch.trainers.pair_data import collate_pairs, pair_logprobs
from self_rewarding_lm_pytorch.trainers.preference_loss import PreferenceLoss
from self_rewarding_lm_pytorch.trainers.reference_logprobs import load_or_compute_ref_logprobs
from self_rewarding_lm_pytorch.training.loop import TrainResult, train
from self_rewarding_lm_pytorch.training.sharding import shard_in_place

__all__ = ["DPOTask", "PairTask", "UnshardableReferenceError", "check_live_reference_shardable", "train_pairs"]


class PairTask:
    """The loop's task for pair losses: one concatenated forward, a reference, TRL metric names.

    `pair_loss(policy_a, policy_b, ref_a, ref_b, chosen_tokens=, rejected_tokens=) -> (losses (b,),
    rewards_a, rewards_b)`, on summed log-probs and response token counts. The reference is stored per
    item (`ref` in each item, precomputed) or a frozen `ref_model` run here; with `needs_reference`
    False (reference-free losses) there is none and the loss gets None.

    `sft_weight` adds RPO's NLL term (Pang et al. 2024, arXiv 2404.19733, Eq. 3): the chosen response's
    NLL per token (its summed log-prob over its token count, from the same forward), averaged over the batch.
    """

    key_metric = "rewards/accuracies"

    def __init__(
        self,
        pair_loss: Callable,
        *,
        pad_id: int,
        ref_model: nn.Module | None = None,
        sft_weight: float = 0.0,
        judge_weight: float = 0.0,
        names: tuple[str, str] = ("chosen", "rejected"),
        autocast: Callable = nullcontext,
        needs_reference: bool = True,
    ):
        self.pair_loss, self.pad_id, self.ref_model = pair_loss, pad_id, ref_model
        self.sft_weight, self.judge_weight = sft_weight, judge_weight
        self.names, self.needs_reference = names, needs_reference
        # The prepared policy runs under the accelerator's mixed precision; the unprepared reference
        # must too, or the implicit rewards start off zero from precision alone.
        self.autocast = autocast

    def collate(self, items: list) -> dict[str, Tensor]:
        return collate_pairs(items, self.pad_id)

    def _reference(self, batch: dict[str, Tensor]) -> tuple[Tensor | None, Tensor | None]:
        if not self.needs_reference:
            return None, None
        if "ref_chosen" in batch:
            return batch["ref_chosen"], batch["ref_rejected"]
        if self.ref_model is None:
            raise RuntimeError("PairTask has neither stored reference log-probs nor a reference model")
        with torch.no_grad(), self.autocast():
            ref_a, ref_b, *_ = pair_logprobs(self.ref_model, batch)
        return ref_a, ref_b

    def step(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        # The reference runs first: its temporaries are freed before the policy's activations
        # (kept for backward) pile up, so the step's peak memory is not the sum of both.
        ref_a, ref_b = self._reference(batch)
        policy_a, policy_b, tokens_a, tokens_b = pair_logprobs(model, batch)
        losses, rewards_a, rewards_b = self.pair_loss(
            policy_a,
            policy_b,
            None if ref_a is None else ref_a.to(policy_a),
            None if ref_b is None else ref_b.to(policy_a),
            chosen_tokens=tokens_a,
            rejected_tokens=tokens_b,
        )
        loss = losses.mean()
        a, b = self.names
        metrics = {
            f"rewards/{a}": rewards_a.mean(),
            f"rewards/{b}": rewards_b.mean(),
            "rewards/margins": (rewards_a - rewards_b).mean(),
            "rewards/accuracies": (rewards_a > rewards_b).float().mean(),
            f"logps/{a}": policy_a.detach().mean(),
            f"logps/{b}": policy_b.detach().mean(),
        }
        if self.sft_weight > 0:
            sft = (-policy_a / tokens_a.clamp(min=1).to(policy_a.dtype)).mean()  # per-token NLL, per response
            metrics["sft_loss"] = sft.detach()
            loss = loss + self.sft_weight * sft
        if self.judge_weight > 0 and "judge_ids" in batch:
            # A forward of its own: judge rows are longer than answers and need not pad the pair rows.
            judge_logits = model(batch["judge_ids"])
            judge = sft_loss(judge_logits, batch["judge_ids"], batch["judge_is_response"]).mean()
            metrics["judge_nll"] = judge.detach()
            loss = loss + self.judge_weight * judge
        metrics["loss"] = loss.detach()
        return loss, metrics


class DPOTask(PairTask):
    """The DPO task (Rafailov et al. 2023): a `PairTask` with `losses.dpo_loss` (any `PreferenceLoss`)."""

    def __init__(
        self,
        *,
        pad_id: int,
        loss: PreferenceLoss | None = None,
        judge_weight: float = 0.0,
        ref_model: nn.Module | None = None,
        autocast: Callable = nullcontext,
        names: tuple[str, str] = ("chosen", "rejected"),
    ):
        loss = PreferenceLoss() if loss is None else loss
        super().__init__(
            loss.pair_loss(),
            pad_id=pad_id,
            ref_model=ref_model,
            sft_weight=loss.sft_weight,
            judge_weight=judge_weight,
            autocast=autocast,
            names=names,
            needs_reference=not loss.reference_free,
        )


def train_pairs(
    model: nn.Module,
    pairs: list[dict],
    make_task: Callable[..., PairTask],
    *,
    pad_id: int,
    accelerator,
    run_dir,
    config,
    ref_model: nn.Module | None = None,
    precompute_ref_logprobs: bool = True,
    resume: bool = False,
    valid_pairs: list[dict] | None = None,
    desc: str = "dpo",
    saved_config: dict | None = None,
    reference_free: bool = False,
) -> TrainResult:
    """Train `model` in place on encoded pairs; the reference is `ref_model` or the policy as it is now.

    With precomputed reference log-probs the reference is only used before training (no copy of the
    policy is made when it is the policy itself); otherwise a frozen copy runs in every step. A
    `reference_free` loss gets neither: no reference pass, no copy.
    """

    splits = {"train": pairs} | ({"valid": valid_pairs} if valid_pairs else {})
    if reference_free:
        task = make_task(ref_model=None, autocast=accelerator.autocast)
    elif precompute_ref_logprobs:
        ref = ref_model if ref_model is not None else model
        ref_logps = load_or_compute_ref_logprobs(
            ref.to(accelerator.device),
            splits,
            run_dir=run_dir,
            resume=resume,
            pad_id=pad_id,
            batch_size=2 * config.batch_size,
            progress=config.progress and accelerator.is_main_process,
            accelerator=accelerator,
        )
        splits = {
            k: [p | {"ref": tuple(r.tolist())} for p, r in zip(v, ref_logps[k], strict=True)] for k, v in splits.items()
        }
        task = make_task(ref_model=None, autocast=accelerator.autocast)
    else:
        # A given reference is frozen in place (no second copy); otherwise the policy as it is now
        # (a copy, or for a fresh LoRA adapter the adapter-off view: no copy at all).
        if ref_model is None:
            check_live_reference_shardable(model, sharded=config.fsdp and accelerator.num_processes > 1)
        frozen = ref_model if ref_model is not None else frozen_reference(model)
        frozen.eval().requires_grad_(False).to(accelerator.device)
        is_own_copy = ref_model is None and not isinstance(frozen, (AdapterOffReference, AdapterSnapshotReference))
        if is_own_copy and config.fsdp and accelerator.num_processes > 1:
            # Our own copy is sharded like the policy; a given reference or a LoRA view is left as it is.
            shard_in_place(frozen, mixed_precision=accelerator.mixed_precision)
        task = make_task(ref_model=frozen, autocast=accelerator.autocast)
    valid = ListDataset(splits["valid"]) if "valid" in splits else None
    return train(
        model,
        task,
        ListDataset(splits["train"]),
        config,
        accelerator=accelerator,
        run_dir=run_dir,
        valid_dataset=valid,
        resume=resume,
        desc=desc,
        saved_config=saved_config,
    )


class UnshardableReferenceError(ValueError):
    """A live reference that reads the policy's own weights was asked for under FSDP sharding."""


def check_live_reference_shardable(model: nn.Module, *, sharded: bool) -> None:
    """Refuse a LoRA policy's live reference (the adapter-off or adapter-snapshot view of the policy)
    when training is sharded: that view runs the user's model, whose base weights the shards hold while
    training (see `training.sharding`), so it would read empty tensors. Precomputed reference
    log-probs (the default) are computed before sharding and work; so does a `ref_model` of your own."""
    if sharded and live_reference_reads_policy(model):
        raise UnshardableReferenceError(
            "a LoRA policy with a live reference (DPO or SPIN with precompute_ref_logprobs=False, or PPO) "
            "cannot train with fsdp=True on more than one process: the reference is the policy's own base "
            "weights, which are sharded while training. For DPO and SPIN use precompute_ref_logprobs=True "
            "(the default) or pass a ref_model"
        )
