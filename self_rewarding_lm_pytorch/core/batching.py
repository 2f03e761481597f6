"""Datasets and batches: list-backed and mock datasets, prompt/response examples as ids, right
padding.

Shapes: b batch, n sequence.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["ListDataset", "SizedDataset", "collate_examples", "create_mock_dataset", "encode_example", "pad_right"]


@runtime_checkable
class SizedDataset(Protocol):
    """What every trainer reads data through: `len(data)` and `data[i]` for i in range(len(data)).

    A list, a map-style torch `Dataset`, a Hugging Face `datasets.Dataset` and any class with these
    two methods qualify; nothing is required to subclass or register anything.
    """

    def __len__(self) -> int: ...

    def __getitem__(self, index: int, /) -> Any: ...


class ListDataset(Dataset):
    """A map-style dataset over a list (what most stages accept besides any `Dataset`)."""

    def __init__(self, items: Sequence):
        self.items = list(items)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


class _MockDataset(Dataset):
    def __init__(self, length: int, output: Callable[[], Any]):
        self.length, self.output = length, output

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        if not 0 <= i < self.length:
            raise IndexError(i)
        return self.output()


def create_mock_dataset(length: int, output: Callable[[], Any] | Any) -> Dataset:
    """A dataset of `length` items, each `output()` (or `output` itself when it is not callable).

    As in the seed README: `create_mock_dataset(100, lambda: (torch.randint(0, 256, (256,)),
    torch.tensor(1)))` gives SFT records `(token_ids, prompt_len)`, and
    `create_mock_dataset(100, lambda: 'mock prompt')` a prompt dataset.
    """
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    return _MockDataset(length, output if callable(output) else (lambda: output))


def pad_right(
    seqs: Sequence[Sequence[int] | Tensor], pad_id: int, *, length: int | None = None
) -> tuple[Tensor, Tensor]:
    """Right-pad id sequences into (ids (b, n) long, is_real (b, n) bool)."""
    tensors = [torch.as_tensor(s, dtype=torch.long).reshape(-1) for s in seqs]
    n = max([t.numel() for t in tensors], default=0) if length is None else length
    ids = torch.full((len(tensors), n), pad_id, dtype=torch.long)
    is_real = torch.zeros((len(tensors), n), dtype=torch.bool)
    for row, t in enumerate(tensors):
        if t.numel() > n:
            raise ValueError(f"sequence {row} has {t.numel()} tokens, more than the padded length {n}")
        ids[row, : t.numel()] = t
        is_real[row, : t.numel()] = True
    return ids, is_real


def encode_example(
    tokenizer,
    prompt: str | Sequence[int] | Tensor,
    response: str | Sequence[int] | Tensor,
    *,
    add_eos: bool = True,
    max_len: int | None = None,
) -> tuple[list[int], int]:
    """(ids, prompt_len) for one example: prompt ids, then response ids, then EOS if the tokenizer has one.

    Strings go through the tokenizer; ids (lists or tensors) are taken as they are. A tokenizer with a
    chat template renders a string prompt as the user turn and a string response as the assistant turn
    (`HFTokenizer.encode_chat`), so prompt_len covers everything before the assistant part. An example longer
    than `max_len` loses response tokens from its end; one whose prompt leaves no room for a single
    response token is a ValueError (callers skip and count those).
    """
    from self_rewarding_lm_pytorch.core.tokenizer import encode_prompt, to_id_list

    if isinstance(prompt, str) and isinstance(response, str) and hasattr(tokenizer, "encode_chat"):
        p, r = tokenizer.encode_chat(prompt, response)
    else:
        p = encode_prompt(tokenizer, prompt) if isinstance(prompt, str) else to_id_list(prompt)
        r = tokenizer.encode(response) if isinstance(response, str) else to_id_list(response)
    eos = getattr(tokenizer, "eos_id", None) if tokenizer is not None else None
    if add_eos and eos is not None and (not r or r[-1] != eos):
        r = [*r, eos]
    if max_len is not None:
        if len(p) >= max_len:
            raise ValueError(f"prompt of {len(p)} tokens leaves no room for a response within max_len={max_len}")
        r = r[: max_len - len(p)]
    return p + r, len(p)


def collate_examples(examples: Sequence[tuple[Sequence[int], int]], pad_id: int) -> dict[str, Tensor]:
    """Right-padded batch of (ids, prompt_len) examples: input_ids (b, n) and is_response (b, n).

    Right padding keeps every real token at the same position it has alone, so a causal model needs
    no attention mask and per-row results do not depend on the batch.
    """
    input_ids, is_real = pad_right([ids for ids, _ in examples], pad_id)
    positions = torch.arange(input_ids.shape[1])
    prompt_lens = torch.tensor([int(pl) for _, pl in examples])
    is_response = is_real & (positions[None, :] >= prompt_lens[:, None])
    return {"input_ids": input_ids, "is_response": is_response}
