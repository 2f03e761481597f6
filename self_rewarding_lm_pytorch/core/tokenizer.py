"""Tokenizers: a small protocol, a built-in byte tokenizer, and a wrapper for plain callables.

Everything in the framework talks to a `Tokenizer`: `encode(str) -> list[int]`,
`decode(ids) -> str`, and the ids `pad_id`, `eos_id` (may be None) and `vocab_size`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = ["ByteTokenizer", "CallableTokenizer", "Tokenizer", "as_tokenizer", "encode_prompt", "to_id_list"]


@runtime_checkable
class Tokenizer(Protocol):
    # Read-only members: an implementation may narrow them (ByteTokenizer's eos_id is always an int).
    @property
    def pad_id(self) -> int: ...

    @property
    def eos_id(self) -> int | None: ...

    @property
    def vocab_size(self) -> int | None: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int] | Tensor) -> str: ...


def to_id_list(ids) -> list[int]:
    """Token ids as a plain list of ints, from a list, tuple or tensor of any dtype.

    The seed README's `encode_str` returns a float tensor (`Tensor(list(map(ord, s)))`), so floats
    are accepted when they are whole numbers; anything else is a clear error, never a silent floor.
    """
    if isinstance(ids, Tensor):
        if ids.ndim != 1:
            raise ValueError(f"token ids must be 1-D, got a tensor of shape {tuple(ids.shape)}")
        if ids.is_floating_point() and not torch.equal(ids, ids.round()):
            raise ValueError("token ids must be whole numbers; the encoder returned non-integral floats")
        return [int(i) for i in ids.tolist()]
    out = []
    for i in ids:
        if isinstance(i, float):
            if not i.is_integer():
                raise ValueError(f"token ids must be whole numbers; the encoder returned {i!r}")
        elif isinstance(i, bool) or not isinstance(i, int):
            if isinstance(i, Tensor) and i.ndim == 0:
                out.extend(to_id_list(i.reshape(1)))
                continue
            raise TypeError(f"token ids must be ints, got {type(i).__name__}")
        out.append(int(i))
    return out


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255, plus pad (256), bos (257) and eos (258) specials.

    Round-trips any text exactly: `decode(encode(s)) == s`. Special ids are skipped when decoding;
    a byte sequence cut mid-character decodes with the replacement character.
    """

    def __init__(self):
        self.pad_id = 256
        self.bos_id = 257
        self.eos_id = 258
        self.vocab_size = 259

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"ByteTokenizer.encode takes a str, got {type(text).__name__}")
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(i for i in to_id_list(ids) if 0 <= i < 256).decode("utf-8", errors="replace")

    def __repr__(self):
        return "ByteTokenizer()"


class CallableTokenizer:
    """Wraps plain `encode(str) -> ids` and `decode(ids) -> str` callables into the protocol.

    `encode` may return a list or a tensor (float tensors of whole numbers are accepted, as the seed
    README's `encode_str` returns one). `decode` receives a 1-D long tensor, which is what the
    seed README's `decode_tokens(tokens: Tensor)` expects.
    """

    def __init__(
        self,
        encode: Callable,
        decode: Callable,
        *,
        pad_id: int = 0,
        eos_id: int | None = None,
        vocab_size: int | None = None,
    ):
        if not callable(encode) or not callable(decode):
            raise TypeError("tokenizer_encode and tokenizer_decode must both be callables")
        self._encode, self._decode = encode, decode
        self.pad_id, self.eos_id, self.vocab_size = pad_id, eos_id, vocab_size

    def encode(self, text: str) -> list[int]:
        return to_id_list(self._encode(text))

    def decode(self, ids) -> str:
        return self._decode(torch.tensor(to_id_list(ids), dtype=torch.long))

    def __repr__(self):
        return f"CallableTokenizer(pad_id={self.pad_id}, eos_id={self.eos_id})"


def as_tokenizer(
    tokenizer: Tokenizer | None = None,
    *,
    tokenizer_encode: Callable | None = None,
    tokenizer_decode: Callable | None = None,
    chat_template: bool | None = None,
    **kwargs,
) -> Tokenizer:
    """One tokenizer from either a `Tokenizer` object or an encode/decode pair (not both).

    A Hugging Face tokenizer is wrapped in `HFTokenizer`; `chat_template=False` turns off its chat
    template (prompts and responses are then plainly concatenated), None keeps what it is (on for a
    bare HF tokenizer that has one).
    """
    from self_rewarding_lm_pytorch.core.hf_tokenizer import HFTokenizer, is_hf_tokenizer

    has_callables = tokenizer_encode is not None or tokenizer_decode is not None
    if tokenizer is not None and has_callables:
        raise ValueError("pass either tokenizer= or tokenizer_encode=/tokenizer_decode=, not both")
    if is_hf_tokenizer(tokenizer):
        return HFTokenizer(tokenizer, chat_template=chat_template is not False)
    if isinstance(tokenizer, HFTokenizer):
        return tokenizer if chat_template is None else tokenizer.with_chat_template(chat_template)
    if tokenizer is not None:
        missing = [a for a in ("encode", "decode", "pad_id", "eos_id") if not hasattr(tokenizer, a)]
        if missing:
            raise TypeError(f"tokenizer lacks {', '.join(missing)} (see the Tokenizer protocol)")
        return tokenizer
    if has_callables:
        if tokenizer_encode is None or tokenizer_decode is None:
            raise ValueError("tokenizer_encode and tokenizer_decode must be given together")
        return CallableTokenizer(tokenizer_encode, tokenizer_decode, **kwargs)
    return ByteTokenizer()


def encode_prompt(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """Ids of a prompt to generate from: through the chat template when the tokenizer has one
    (`HFTokenizer.encode_prompt`), else plain `encode`."""
    render = getattr(tokenizer, "encode_prompt", None)
    return list(render(prompt)) if render is not None else tokenizer.encode(prompt)
