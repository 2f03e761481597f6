"""Preference records as the DPO and SPIN trainers use them: checked, encoded, batched, scored.

Shapes: b pairs in a batch, n sequence. A batch holds 2b rows: the b chosen sequences, then the b
rejected ones ("(two b)" in einops), right padded, so both go through a model in one forward pass.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence, Sized
from typing import Any, NamedTuple, cast

import torch
from einops import rearrange
from torch import Tensor, nn

from self_rewarding_lm_pytorch.core.batching import SizedDataset, collate_examples, encode_example
from self_rewarding_lm_pytorch.core.logprobs import response_token_counts, sequence_logprobs

__all__ = [
    "PairLogprobs",
    "PreferenceRecordError",
    "collate_pairs",
    "drop_identical_pairs",
    "encode_pairs",
    "normalize_preference",
    "pair_logprobs",
]

log = logging.getLogger(__name__)


class PreferenceRecordError(ValueError):
    """A preference record that cannot be trained on; the message names the record."""


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
