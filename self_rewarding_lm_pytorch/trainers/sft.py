"""Supervised fine-tuning: next-token cross-entropy on the response tokens only.

Shapes: b batch, n sequence, v vocab.

Items may be `(prompt, response)` (strings or ids), dicts with "prompt"/"response", or
`(token_ids, prompt_len)` as in the seed README's
`create_mock_dataset(100, lambda: (torch.randint(0, 256, (256,)), torch.tensor(1)))`
(prompt_len = number of leading prompt tokens). Every item is encoded once, before training:
a mock dataset that draws fresh random items on each access is frozen, so resume is exact.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from beartype import beartype
from torch import Tensor, nn
from tqdm.auto import tqdm

from self_rewarding_lm_pytorch.core.batching import ListDataset, collate_examples, encode_example
from self_rewarding_lm_pytorch.core.losses import sft_loss
from self_rewarding_lm_pytorch.core.tokenizer import to_id_list
from self_rewarding_lm_pytorch.models import model_and_tokenizer
from self_rewarding_lm_pytorch.training.accelerators import make_accelerator
from self_rewarding_lm_pytorch.training.loop import TrainConfig, TrainResult, train

__all__ = ["NoResponseTokens", "SFTTask", "SFTTrainer", "prepare_sft_examples", "to_sft_example", "train_sft"]

log = logging.getLogger(__name__)


def _is_scalar(x) -> bool:
    if isinstance(x, Tensor):
        return x.ndim == 0 and not x.is_floating_point()  # a 1-element id tensor is a response, not a length
    return isinstance(x, int) and not isinstance(x, bool)


def to_sft_example(item: Any, tokenizer, max_seq_len: int | None = None) -> tuple[list[int], int]:
    """One dataset item as `(ids, prompt_len)`; too long -> response truncated at its end.

    Raises `NoResponseTokens` (a ValueError) when no response token fits (callers skip and count
    those), TypeError for an item of unknown shape.
    """
    ids, prompt_len = _encode_item(item, tokenizer, max_seq_len)
    if prompt_len >= len(ids):
        raise NoResponseTokens(
            f"no response tokens: prompt_len {prompt_len} >= {len(ids)} tokens (max_seq_len={max_seq_len})"
        )
    return ids, prompt_len


class NoResponseTokens(ValueError):
    """An SFT item whose response is empty or does not fit in max_seq_len after its prompt."""


def _encode_item(item, tokenizer, max_seq_len):
    if isinstance(item, dict):
        if "prompt" not in item or "response" not in item:
            raise TypeError(f"an SFT dict item needs 'prompt' and 'response' keys, got {sorted(item)}")
        return _encode_pair(tokenizer, item["prompt"], item["response"], max_seq_len)
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise TypeError(
            f"an SFT item is (prompt, response), a dict or (token_ids, prompt_len); got {type(item).__name__}"
        )
    first, second = item
    if not _is_scalar(second):
        return _encode_pair(tokenizer, first, second, max_seq_len)
    # (token_ids, prompt_len): the ids are complete as given, so no EOS is appended.
    ids, prompt_len = to_id_list(first), int(second)
    if prompt_len < 0:
        raise ValueError(f"prompt_len must be >= 0, got {prompt_len}")
    return (ids if max_seq_len is None else ids[:max_seq_len]), prompt_len


def _encode_pair(tokenizer, prompt, response, max_seq_len):
    try:
        return encode_example(tokenizer, prompt, response, max_len=max_seq_len)
    except ValueError as e:
        if "leaves no room" in str(e):
            raise NoResponseTokens(str(e)) from e
        raise


def prepare_sft_examples(
    dataset, tokenizer, max_seq_len: int | None = None, num_tokens: int | None = None
) -> tuple[list, int]:
    """All items as `(ids, prompt_len)`, plus how many were skipped for leaving no response token."""
    examples, skipped = [], 0
    for index in tqdm(range(len(dataset)), desc="encode sft items", disable=len(dataset) < 10_000, leave=False):
        try:
            ids, prompt_len = to_sft_example(dataset[index], tokenizer, max_seq_len)
        except NoResponseTokens:
            skipped += 1
            continue
        except ValueError as e:
            raise ValueError(f"SFT item {index}: {e}") from e
        if num_tokens is not None and ids and not 0 <= min(ids) <= max(ids) < num_tokens:
            raise ValueError(
                f"SFT item {index} has token ids outside the model's vocabulary [0, {num_tokens}) "
                f"(min {min(ids)}, max {max(ids)}); pass a tokenizer whose ids fit the model"
            )
        examples.append((ids, prompt_len))
    return examples, skipped


class SFTTask:
    """The loop's task for SFT: collate `(ids, prompt_len)` examples, loss = mean over rows of each
    row's mean response-token cross-entropy (`losses.sft_loss`); prompt and pad tokens never count."""

    key_metric = "loss"

    def __init__(self, pad_id: int = 0):
        self.pad_id = pad_id

    def collate(self, examples: list) -> dict[str, Tensor]:
        return collate_examples(examples, self.pad_id)

    def step(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        input_ids, is_response = batch["input_ids"], batch["is_response"]
        losses = sft_loss(model(input_ids), input_ids, is_response)
        return losses.mean(), {"response_tokens": is_response.sum(dim=-1).float().mean()}


def _pad_id_for(tokenizer, num_tokens: int | None) -> int:
    # Right padding never reaches a real token of a causal model, so any in-vocabulary id pads safely;
    # fall back to 0 when the tokenizer's pad id is outside the model's vocabulary (seed: 256 tokens).
    pad_id = getattr(tokenizer, "pad_id", 0)
    return pad_id if num_tokens is None or 0 <= pad_id < num_tokens else 0


@beartype
def train_sft(
    model: nn.Module,
    dataset: Any,
    *,
    tokenizer: Any = None,
    accelerator: Accelerator | None,
    run_dir: str | Path | None,
    config: TrainConfig,
    valid_dataset: Any = None,
    resume: bool = False,
    max_seq_len: int | None = None,
) -> TrainResult:
    """Encode the dataset once, then run the loop with `SFTTask`. `max_seq_len` defaults to the model's.

    `result.info["num_skipped"]` counts items skipped because no response token fit in max_seq_len.
    """
    model, tokenizer = model_and_tokenizer(model, tokenizer)
    max_seq_len = max_seq_len if max_seq_len is not None else getattr(model, "max_seq_len", None)
    num_tokens = getattr(model, "num_tokens", None)
    examples, skipped = prepare_sft_examples(dataset, tokenizer, max_seq_len, num_tokens)
    if skipped:
        log.warning(
            "SFT: skipped %d of %d items with no response token within max_seq_len=%s",
            skipped,
            len(dataset),
            max_seq_len,
        )
    if not examples:
        raise ValueError(f"no SFT item has a response token within max_seq_len={max_seq_len}")
    valid = None
    if valid_dataset is not None:
        valid = ListDataset(prepare_sft_examples(valid_dataset, tokenizer, max_seq_len, num_tokens)[0])
    result = train(
        model,
        SFTTask(_pad_id_for(tokenizer, num_tokens)),
        ListDataset(examples),
        config,
        accelerator=accelerator,
        run_dir=run_dir,
        valid_dataset=valid,
        resume=resume,
        saved_config={"stage": "sft", "max_seq_len": max_seq_len, "num_skipped": skipped},
        desc="sft",
    )
    result.info["num_skipped"] = skipped
    return result


class SFTTrainer:
    """Seed-style SFT trainer: `SFTTrainer(model, dataset, **TrainConfig fields)()` -> TrainResult.

    Writes to `checkpoint_folder` (metrics.jsonl, step checkpoints, model.safetensors) when given;
    `checkpoint_every` or `resume` without a folder use "./checkpoints/sft". A Hugging Face model
    takes `peft_config=` (LoRA via `peft.get_peft_model`) and `chat_template=False` (no chat rendering).
    """

    @beartype
    def __init__(
        self,
        model: nn.Module,
        train_dataset: Any,
        *,
        tokenizer: Any = None,
        valid_dataset: Any = None,
        max_seq_len: int | None = None,
        accelerator: Accelerator | None = None,
        accelerate_kwargs: dict | None = None,
        checkpoint_folder: str | Path | None = None,
        resume: bool = False,
        peft_config: Any = None,
        chat_template: bool | None = None,
        **train_config,
    ):
        unknown = sorted(set(train_config) - set(TrainConfig.__dataclass_fields__))
        if unknown:
            raise TypeError(
                f"SFTTrainer got unknown argument(s) {unknown}; TrainConfig fields are "
                f"{sorted(TrainConfig.__dataclass_fields__)}"
            )
        if accelerator is not None and accelerate_kwargs:
            raise ValueError("pass accelerator= or accelerate_kwargs=, not both")
        if len(train_dataset) == 0:
            raise ValueError("train_dataset is empty")
        if checkpoint_folder is None and (train_config.get("checkpoint_every") or resume):
            checkpoint_folder = Path("./checkpoints/sft")
        # Dropout stays on for SFT unless asked (TRL's SFT trainer keeps it; DPO, SPIN and PPO turn it off).
        self.config = TrainConfig(**{"disable_dropout": False, **train_config})
        self.model, self.tokenizer = model_and_tokenizer(
            model, tokenizer, peft_config=peft_config, chat_template=chat_template
        )
        self.train_dataset, self.valid_dataset = train_dataset, valid_dataset
        self.max_seq_len, self.resume = max_seq_len, resume
        self.accelerator, self.accelerate_kwargs = accelerator, accelerate_kwargs
        self.checkpoint_folder = Path(checkpoint_folder) if checkpoint_folder is not None else None

    def __call__(self) -> TrainResult:
        accelerator = self.accelerator or make_accelerator(self.accelerate_kwargs)
        return train_sft(
            self.model,
            self.train_dataset,
            tokenizer=self.tokenizer,
            accelerator=accelerator,
            run_dir=self.checkpoint_folder,
            config=self.config,
            valid_dataset=self.valid_dataset,
            resume=self.resume,
            max_seq_len=self.max_seq_len,
        )
