"""DPO on preference pairs, with the reference as a frozen copy or as log-probs computed once.

Shapes: b pairs in a batch, n sequence, v vocab. A batch holds 2b rows: the b chosen sequences,
then the b rejected ones ("(two b)" in einops), right padded, so both go through the policy in
one forward pass.

The pair machinery (`trainers.pair_data`, `trainers.reference_logprobs`, and `PairTask`, `train_pairs`
here) is shared with SPIN, which is DPO with (real, generated) pairs and a different pair loss, not a
copy of this file. Their names stay importable from here.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import torch
from beartype import beartype
from torch import Tensor, nn

from self_rewarding_lm_pytorch.core.batching import ListDataset, SizedDataset
from self_rewarding_lm_pytorch.core.losses import (
    DPO_LOSS_TYPES,
    sft_loss,
)
from self_rewarding_lm_pytorch.core.tokenizer import ByteTokenizer, CallableTokenizer
from self_rewarding_lm_pytorch.models import as_model, frozen_reference, model_and_tokenizer
from self_rewarding_lm_pytorch.models.base import (
    AdapterOffReference,
    AdapterSnapshotReference,
    live_reference_reads_policy,
)
from self_rewarding_lm_pytorch.trainers.judge_mixing import attach_judge_examples, encode_judge_examples
from self_rewarding_lm_pytorch.trainers.pair_data import (
    PairLogprobs,
    PreferenceRecordError,
    collate_pairs,
    drop_identical_pairs,
    encode_pairs,
    normalize_preference,
    pair_logprobs,
)
from self_rewarding_lm_pytorch.trainers.preference_loss import PreferenceLoss
from self_rewarding_lm_pytorch.trainers.reference_logprobs import (
    REF_LOGPROBS_FILE,
    compute_ref_logprobs,
    load_or_compute_ref_logprobs,
)
from self_rewarding_lm_pytorch.training.accelerators import make_accelerator
from self_rewarding_lm_pytorch.training.loop import TrainConfig, TrainResult, train
from self_rewarding_lm_pytorch.training.sharding import shard_in_place

__all__ = [
    "DPO_LOSS_TYPES",
    "REF_LOGPROBS_FILE",
    "DPOTask",
    "DPOTrainer",
    "PairLogprobs",
    "PairTask",
    "PreferenceRecordError",
    "UnshardableReferenceError",
    "check_live_reference_shardable",
    "collate_pairs",
    "compute_ref_logprobs",
    "default_tokenizer",
    "drop_identical_pairs",
    "encode_pairs",
    "load_or_compute_ref_logprobs",
    "normalize_preference",
    "pair_logprobs",
    "train_dpo",
    "train_pairs",
]


def default_tokenizer(model: nn.Module, tokenizer=None, *, chat_template: bool | None = None):
    """The tokenizer to use when the caller gave none, checked against the model's vocabulary.

    The byte tokenizer's specials (pad 256, eos 258) do not exist in a 256-token model such as the
    seed README's, so for such a model the default pads with 0 (harmless: padding is right-aligned
    and masked) and has no EOS. A tokenizer the caller passed must fit the model, or it is an error.
    """
    num_tokens = getattr(model, "num_tokens", None)
    if tokenizer is None:
        byte = ByteTokenizer()
        if num_tokens is None or num_tokens >= byte.vocab_size:
            return byte
        return CallableTokenizer(byte.encode, byte.decode, pad_id=0, eos_id=None, vocab_size=256)
    _, tokenizer = model_and_tokenizer(model, tokenizer, chat_template=chat_template)
    for name in ("pad_id", "eos_id"):
        value = getattr(tokenizer, name)
        if num_tokens is not None and value is not None and not 0 <= value < num_tokens:
            raise ValueError(f"tokenizer {name}={value} is outside the model's {num_tokens} tokens")
    return tokenizer


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


@beartype
def train_dpo(
    model: nn.Module,
    records: SizedDataset,
    *,
    tokenizer,
    accelerator,
    run_dir: str | Path | None,
    config: TrainConfig,
    valid_records: SizedDataset | None = None,
    judge_records: SizedDataset | None = None,
    **dpo_settings: Any,
) -> TrainResult:
    """DPO on preference records with a built `TrainConfig`: `DPOTrainer` (the one implementation) run once.

    `dpo_settings` are `DPOTrainer`'s other keywords (the loss settings, `ref_model`, `judge_weight`,
    ...). The reference is the policy as it is on entry. Returns the loop's `TrainResult`; `model`
    is trained in place.
    """
    return DPOTrainer(
        model,
        records,
        tokenizer=tokenizer,
        accelerator=accelerator,
        checkpoint_folder=run_dir,
        valid_data=valid_records,
        judge_data=judge_records,
        **dpo_settings,
        **config.to_kwargs(),
    )()


def _limits(model: nn.Module, max_seq_len: int | None) -> dict:
    """Length and vocabulary limits of the model; sequences default to its max_seq_len (absolute positions)."""
    return {
        "max_seq_len": max_seq_len if max_seq_len is not None else getattr(model, "max_seq_len", None),
        "num_tokens": getattr(model, "num_tokens", None),
    }


def _dpo_record(**settings) -> dict:
    """The DPO settings saved with every checkpoint (the loop saves its own TrainConfig beside them)."""
    return {"stage": "dpo", **settings}


class DPOTrainer:
    """DPO trainer: `DPOTrainer(model, records, beta=0.1, ...)()` trains `model` in place.

    Records are dicts {"prompt", "chosen", "rejected"} (str or token ids) or 3-tuples; bad records
    are an error here, at construction. Remaining keyword arguments are `TrainConfig` fields. A Hugging
    Face model takes `peft_config=` (LoRA) and `chat_template=False` (no chat rendering).
    """

    @beartype
    def __init__(
        self,
        model: nn.Module,
        train_data: SizedDataset,
        *,
        tokenizer=None,
        ref_model: nn.Module | None = None,
        precompute_ref_logprobs: bool = True,
        beta: float = 0.1,
        loss_type: str = "sigmoid",
        label_smoothing: float = 0.0,
        sft_weight: float = 0.0,
        dpop_lambda: float = 50.0,
        simpo_gamma: float = 0.5,
        orpo_lambda: float = 0.1,
        max_seq_len: int | None = None,
        valid_data: SizedDataset | None = None,
        judge_data: SizedDataset | None = None,
        judge_weight: float = 1.0,
        judge_per_pair: int = 1,
        accelerator=None,
        accelerate_kwargs: dict | None = None,
        checkpoint_folder: str | Path | None = None,
        resume: bool = False,
        peft_config: Any = None,
        chat_template: bool | None = None,
        **train_config,
    ):
        self.loss = PreferenceLoss(
            beta=beta,
            loss_type=loss_type,
            label_smoothing=label_smoothing,
            sft_weight=sft_weight,
            dpop_lambda=dpop_lambda,
            simpo_gamma=simpo_gamma,
            orpo_lambda=orpo_lambda,
        )
        self.config = TrainConfig(**train_config)  # an unknown keyword is a TypeError here
        model = as_model(model, peft_config=peft_config)
        self.model, self.tokenizer = model, default_tokenizer(model, tokenizer, chat_template=chat_template)
        limits = _limits(model, max_seq_len)
        self.pairs, self.num_identical_pairs = drop_identical_pairs(encode_pairs(train_data, self.tokenizer, **limits))
        self.valid_pairs = (
            drop_identical_pairs(encode_pairs(valid_data, self.tokenizer, **limits), what="validation records")[0]
            if valid_data
            else None
        )
        if judge_weight < 0:
            raise ValueError(f"judge_weight must be >= 0, got {judge_weight}")
        if judge_data is not None:  # keeping the judge alive (trainers.judge_mixing)
            judge = encode_judge_examples(judge_data, self.tokenizer, max_seq_len=limits["max_seq_len"])
            self.pairs = attach_judge_examples(self.pairs, judge, per_pair=judge_per_pair, seed=self.config.seed)
        self.judge_weight = judge_weight if judge_data is not None else 0.0
        self.precompute_ref_logprobs, self.resume, self.max_seq_len = precompute_ref_logprobs, resume, max_seq_len
        self.checkpoint_folder = None if checkpoint_folder is None else Path(checkpoint_folder)
        self.accelerator, self.accelerate_kwargs = accelerator, accelerate_kwargs
        # Live reference: the frozen copy is the policy at construction, as documented.
        self.ref_model = ref_model
        if not precompute_ref_logprobs and ref_model is None and not self.loss.reference_free:
            self.ref_model = frozen_reference(model)

    def __call__(self) -> TrainResult:
        if self.accelerator is None:
            self.accelerator = make_accelerator(self.accelerate_kwargs)
        make_task = partial(DPOTask, pad_id=self.tokenizer.pad_id, loss=self.loss, judge_weight=self.judge_weight)
        result = train_pairs(
            self.model,
            self.pairs,
            make_task,
            pad_id=self.tokenizer.pad_id,
            accelerator=self.accelerator,
            run_dir=self.checkpoint_folder,
            config=self.config,
            ref_model=self.ref_model,
            precompute_ref_logprobs=self.precompute_ref_logprobs,
            resume=self.resume,
            valid_pairs=self.valid_pairs,
            desc="dpo",
            saved_config=_dpo_record(
                **self.loss.to_dict(),
                judge_weight=self.judge_weight,
                precompute_ref_logprobs=self.precompute_ref_logprobs,
                max_seq_len=self.max_seq_len,
            ),
            reference_free=self.loss.reference_free,
        )
        if self.precompute_ref_logprobs:
            self.ref_model = None  # the log-probs are stored; do not keep a second model alive
        result.info["num_identical_pairs"] = self.num_identical_pairs
        return result
