"""DPO on preference pairs, with the reference as a frozen copy or as log-probs computed once.

Shapes: b pairs in a batch, n sequence, v vocab. A batch holds 2b rows: the b chosen sequences,
then the b rejected ones ("(two b)" in einops), right padded, so both go through the policy in
one forward pass.

The pair machinery (`trainers.pair_data`, `trainers.reference_logprobs`, `trainers.pair_training`) is
shared with SPIN, which is DPO with (real, generated) pairs and a different pair loss, not a copy of
this file. Their names stay importable from here.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from beartype import beartype
from torch import nn

from self_rewarding_lm_pytorch.core.batching import SizedDataset
from self_rewarding_lm_pytorch.core.losses import DPO_LOSS_TYPES
from self_rewarding_lm_pytorch.core.tokenizer import ByteTokenizer, CallableTokenizer
from self_rewarding_lm_pytorch.models import as_model, frozen_reference, model_and_tokenizer
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
from self_rewarding_lm_pytorch.trainers.pair_training import (
    DPOTask,
    PairTask,
    UnshardableReferenceError,
    check_live_reference_shardable,
    train_pairs,
)
from self_rewarding_lm_pytorch.trainers.preference_loss import PreferenceLoss
from self_rewarding_lm_pytorch.trainers.reference_logprobs import (
    REF_LOGPROBS_FILE,
    compute_ref_logprobs,
    load_or_compute_ref_logprobs,
)
from self_rewarding_lm_pytorch.training.accelerators import make_accelerator
from self_rewarding_lm_pytorch.training.loop import TrainConfig, TrainResult

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
