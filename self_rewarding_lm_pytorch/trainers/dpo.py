"""DPO on preference pairs, with the reference as a frozen copy or as log-probs computed once.

Shapes: b pairs in a batch, n sequence, v vocab. A batch holds 2b rows: the b chosen sequences,
then the b rejected ones ("(two b)" in einops), right padded, so both go through the policy in
one forward pass.

The pair machinery here (`encode_pairs`, `PairTask`, `train_pairs`) is shared with SPIN, which is
DPO with (real, generated) pairs and a different pair loss, not a copy of this file.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence, Sized
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple, cast

import torch
from accelerate.utils import gather_object
from beartype import beartype
from einops import rearrange
from safetensors import safe_open
from safetensors.torch import load_file, save
from torch import Tensor, nn
from tqdm.auto import tqdm

from self_rewarding_lm_pytorch.core.batching import ListDataset, SizedDataset, collate_examples, encode_example
from self_rewarding_lm_pytorch.core.files import atomic_write_bytes
from self_rewarding_lm_pytorch.core.logprobs import response_token_counts, sequence_logprobs
from self_rewarding_lm_pytorch.core.losses import (
    DPO_LOSS_TYPES,
    sft_loss,
)
from self_rewarding_lm_pytorch.core.tokenizer import ByteTokenizer, CallableTokenizer
from self_rewarding_lm_pytorch.models import as_model, frozen_reference, model_and_tokenizer
from self_rewarding_lm_pytorch.models.base import AdapterOffReference, AdapterSnapshotReference
from self_rewarding_lm_pytorch.trainers.judge_mixing import attach_judge_examples, encode_judge_examples
from self_rewarding_lm_pytorch.trainers.preference_loss import PreferenceLoss
from self_rewarding_lm_pytorch.training.loop import TrainConfig, TrainResult, make_accelerator, train
from self_rewarding_lm_pytorch.training.sharding import shard_in_place

__all__ = [
    "DPO_LOSS_TYPES",
    "DPOTask",
    "DPOTrainer",
    "PairLogprobs",
    "PairTask",
    "PreferenceRecordError",
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

REF_LOGPROBS_FILE = "ref_logprobs.safetensors"
log = logging.getLogger(__name__)


class PreferenceRecordError(ValueError):
    """A preference record that cannot be trained on; the message names the record."""


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


def _is_empty(x) -> bool:
    return (len(x) == 0) if not isinstance(x, Tensor) else x.numel() == 0


def normalize_preference(record: Any, index: int) -> tuple:
    """(prompt, chosen, rejected) of one record: a dict with those keys or a 3-tuple/list."""
    if isinstance(record, dict):
        missing = [k for k in ("prompt", "chosen", "rejected") if k not in record]
        if missing:
            raise PreferenceRecordError(f"preference record {index} lacks key(s) {missing}: {_show(record)}")
        fields = (record["prompt"], record["chosen"], record["rejected"])
    elif isinstance(record, (tuple, list)) and len(record) == 3:
        fields = tuple(record)
    else:
        raise PreferenceRecordError(
            f"preference record {index} must be a dict with prompt/chosen/rejected or a 3-tuple, got {_show(record)}"
        )
    for name, value in zip(("prompt", "chosen", "rejected"), fields, strict=True):
        if not isinstance(value, (str, list, tuple, Tensor)):
            raise PreferenceRecordError(
                f"preference record {index}: {name} must be a str or token ids, got {type(value).__name__}"
            )
        if name != "prompt" and _is_empty(value):
            raise PreferenceRecordError(f"preference record {index}: {name} response is empty")
    return fields


def _show(record, limit: int = 120) -> str:
    text = repr(record)
    return text if len(text) <= limit else text[:limit] + "..."


def encode_pairs(
    records: SizedDataset, tokenizer, *, max_seq_len: int | None = None, num_tokens: int | None = None
) -> list[dict]:
    """Each record as {"chosen": (ids, prompt_len), "rejected": (ids, prompt_len)}, checked early.

    `num_tokens` (the model's vocabulary) turns an out-of-range id into an error naming the record
    instead of an index error deep inside the embedding.
    """
    pairs = []
    for index in range(len(cast(Sized, records))):  # by index: map-style Datasets need not be iterable
        record = records[index]
        prompt, chosen, rejected = normalize_preference(record, index)
        # a response cut at the sampler's max_new_tokens did not end: no EOS is appended to it
        finished = {
            side: not (isinstance(record, dict) and record.get(f"{side}_finished") is False)
            for side in ("chosen", "rejected")
        }
        try:
            pairs.append(
                {
                    side: encode_example(tokenizer, prompt, text, add_eos=finished[side], max_len=max_seq_len)
                    for side, text in (("chosen", chosen), ("rejected", rejected))
                }
            )
        except (ValueError, TypeError) as e:
            raise PreferenceRecordError(f"preference record {index}: {e}") from None
        for side in ("chosen", "rejected"):
            ids, prompt_len = pairs[-1][side]
            if len(ids) == prompt_len:
                raise PreferenceRecordError(f"preference record {index}: the {side} response encodes to no tokens")
            if num_tokens is not None and not 0 <= min(ids) <= max(ids) < num_tokens:
                raise PreferenceRecordError(
                    f"preference record {index}: {side} has token ids outside the model's "
                    f"vocabulary [0, {num_tokens}) (min {min(ids)}, max {max(ids)})"
                )
        if pairs[-1]["chosen"][1] == 0:
            raise PreferenceRecordError(
                f"preference record {index}: the prompt is empty (the first response token "
                "would have nothing predicting it; start prompts with a BOS token)"
            )
    if not pairs:
        raise PreferenceRecordError("no preference records to train on")
    return pairs


def drop_identical_pairs(pairs: list[dict], *, what: str = "preference records") -> tuple[list[dict], int]:
    """(pairs whose chosen and rejected sequences differ, how many were dropped).

    An identical pair has a DPO term of exactly 0 (its margin is 0 whatever the weights), so it would
    only add the NLL of one text and dilute the batch mean; it is dropped and counted instead.
    """
    kept = [p for p in pairs if list(p["chosen"][0]) != list(p["rejected"][0])]
    dropped = len(pairs) - len(kept)
    if dropped:
        log.warning("dropped %d of %d %s whose chosen and rejected responses are identical", dropped, len(pairs), what)
    if not kept:
        raise PreferenceRecordError(f"all {len(pairs)} {what} have identical chosen and rejected responses")
    return kept, dropped


def collate_pairs(items: Sequence[dict], pad_id: int) -> dict[str, Tensor]:
    """input_ids/is_response (2b, n): chosen rows then rejected rows; ref_chosen/ref_rejected (b,) if stored."""
    batch = collate_examples([it["chosen"] for it in items] + [it["rejected"] for it in items], pad_id)
    if all("ref" in it for it in items):
        ref = torch.tensor([it["ref"] for it in items], dtype=torch.float32)  # (b, 2)
        batch["ref_chosen"], batch["ref_rejected"] = ref.unbind(dim=-1)
    judge = [example for it in items for example in it.get("judge", ())]
    if judge:  # judge examples riding along (trainers.judge_mixing)
        rows = collate_examples(judge, pad_id)
        batch["judge_ids"], batch["judge_is_response"] = rows["input_ids"], rows["is_response"]
    return batch


class PairLogprobs(NamedTuple):
    """Summed response log-probs (b,) of a pair batch and the response token counts (b,) behind them."""

    chosen: Tensor
    rejected: Tensor
    chosen_tokens: Tensor
    rejected_tokens: Tensor


def pair_logprobs(model: nn.Module, batch: dict[str, Tensor]) -> PairLogprobs:
    """Summed log-probs and token counts of the chosen and rejected rows, from one forward over the 2b rows."""
    logps = sequence_logprobs(model(batch["input_ids"]), batch["input_ids"], batch["is_response"])
    chosen, rejected = rearrange(logps, "(two b) -> two b", two=2)
    chosen_tokens, rejected_tokens = rearrange(response_token_counts(batch["is_response"]), "(two b) -> two b", two=2)
    return PairLogprobs(chosen, rejected, chosen_tokens, rejected_tokens)


@torch.no_grad()
def compute_ref_logprobs(
    ref_model: nn.Module, pairs: Sequence[dict], *, pad_id: int, batch_size: int = 16, progress: bool = True
) -> Tensor:
    """Reference log-probs (N, 2) [chosen, rejected] of every pair, in eval mode, without grad.

    Pairs are batched longest first so each batch pads little; results are scattered back to the
    dataset order. Right padding makes each row's value independent of its batch mates.
    """
    was_training = ref_model.training
    ref_model.eval()
    device = next(ref_model.parameters()).device
    order = sorted(range(len(pairs)), key=lambda i: -max(len(pairs[i]["chosen"][0]), len(pairs[i]["rejected"][0])))
    out = torch.empty(len(pairs), 2, dtype=torch.float32)
    try:
        starts = range(0, len(order), batch_size)
        for start in tqdm(starts, desc="reference log-probs", disable=not progress, leave=False):
            idx = order[start : start + batch_size]
            batch = {k: v.to(device) for k, v in collate_pairs([pairs[i] for i in idx], pad_id).items()}
            chosen, rejected, *_ = pair_logprobs(ref_model, batch)
            out[idx] = torch.stack((chosen, rejected), dim=-1).float().cpu()
    finally:
        ref_model.train(was_training)
    return out


def _pairs_digest(pairs: Sequence[dict]) -> str:
    """A hash of the encoded pairs, so stored reference log-probs are only reused for the same data."""
    h = hashlib.sha256()
    for p in pairs:
        h.update(
            json.dumps(
                [
                    list(map(int, p["chosen"][0])),
                    int(p["chosen"][1]),
                    list(map(int, p["rejected"][0])),
                    int(p["rejected"][1]),
                ]
            ).encode()
        )
    return h.hexdigest()


def load_or_compute_ref_logprobs(
    ref_model: nn.Module,
    splits: dict[str, list[dict]],
    *,
    run_dir: Path | None,
    resume: bool,
    pad_id: int,
    batch_size: int,
    progress: bool,
    accelerator=None,
) -> dict[str, Tensor]:
    """Reference log-probs per split, reused from `run_dir` on resume (the policy has moved since).

    With several processes each computes an interleaved share of the pairs and all of them gather
    the whole table; only the main process writes the file.
    """
    digest = hashlib.sha256("".join(_pairs_digest(splits[k]) + k for k in sorted(splits)).encode()).hexdigest()
    path = None if run_dir is None else Path(run_dir) / REF_LOGPROBS_FILE
    if resume and path is not None and path.exists():
        with safe_open(str(path), framework="pt") as f:
            stored_digest = (f.metadata() or {}).get("digest")
        if stored_digest != digest:
            raise ValueError(f"{path} was computed for different pairs; cannot resume this run with new data")
        return load_file(str(path))
    compute = partial(compute_ref_logprobs, ref_model, pad_id=pad_id, batch_size=batch_size, progress=progress)
    with nullcontext() if accelerator is None else accelerator.autocast():  # the policy's precision
        out = {k: _sharded(compute, v, accelerator) for k, v in splits.items()}
    if path is not None and (accelerator is None or accelerator.is_main_process):
        atomic_write_bytes(path, save(out, metadata={"digest": digest, "reduction": "sum"}))
    return out


def _sharded(compute: Callable, pairs: list[dict], accelerator) -> Tensor:
    """compute(pairs) -> (N, 2), split over the processes: rank r takes pairs r, r + N, ... (balanced lengths)."""
    world = 1 if accelerator is None else accelerator.num_processes
    if world == 1:
        return compute(pairs)
    mine = list(range(accelerator.process_index, len(pairs), world))
    values = compute([pairs[i] for i in mine]) if mine else torch.empty(0, 2)
    out = torch.empty(len(pairs), 2, dtype=torch.float32)
    for indices, rows in gather_object([(mine, values.tolist())]):  # python floats hold float32 exactly
        out[indices] = torch.tensor(rows, dtype=torch.float32).reshape(-1, 2)
    return out


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
