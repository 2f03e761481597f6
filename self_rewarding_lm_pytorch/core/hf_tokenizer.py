"""Hugging Face tokenizers behind the package's `Tokenizer` protocol, with their chat templates.

`as_tokenizer` wraps any `transformers.PreTrainedTokenizerBase` in `HFTokenizer` by itself, so users
never wrap by hand. When the tokenizer has a chat template (and `chat_template=True`), a string prompt
is rendered as one user message followed by the generation prompt, and a response as the assistant
message of that conversation: `encode_chat(prompt, response)` returns the two parts separately, so the
loss can cover the assistant part only. Nothing here imports `transformers`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from torch import Tensor

__all__ = ["ChatTemplateError", "HFTokenizer", "is_hf_tokenizer"]


class ChatTemplateError(ValueError):
    """The chat template renders the assistant turn in a way that changes the prompt before it."""


def is_hf_tokenizer(tokenizer: Any) -> bool:
    """True for any `transformers.PreTrainedTokenizerBase` (fast, slow or backend tokenizers)."""
    return any(cls.__name__ == "PreTrainedTokenizerBase" for cls in type(tokenizer).__mro__)


class HFTokenizer:
    """pad/eos from the tokenizer (a missing pad token falls back to eos, with a warning)."""

    def __init__(self, tokenizer: Any, *, chat_template: bool = True):
        if not is_hf_tokenizer(tokenizer):
            raise TypeError(f"HFTokenizer wraps a transformers tokenizer, got {type(tokenizer).__name__}")
        self.hf_tokenizer = tokenizer
        self.eos_id: int | None = tokenizer.eos_token_id
        pad = tokenizer.pad_token_id
        if pad is None:
            if self.eos_id is None:
                raise ValueError("the tokenizer has neither a pad token nor an eos token: set tokenizer.pad_token")
            warnings.warn(
                f"the tokenizer has no pad token; padding with its eos token (id {self.eos_id})", stacklevel=3
            )
            pad = self.eos_id
        self.pad_id: int = pad
        self.vocab_size: int = len(tokenizer)
        self.uses_chat_template = chat_template and bool(getattr(tokenizer, "chat_template", None))

    def with_chat_template(self, chat_template: bool) -> HFTokenizer:
        if chat_template == self.uses_chat_template:
            return self
        return HFTokenizer(self.hf_tokenizer, chat_template=chat_template)

    def encode(self, text: str) -> list[int]:
        """Plain text to ids, no special tokens added (a response, a judgment, a budget count)."""
        return list(self.hf_tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int] | Tensor) -> str:
        from self_rewarding_lm_pytorch.core.tokenizer import to_id_list

        return self.hf_tokenizer.decode(to_id_list(ids), skip_special_tokens=True)

    def _render(self, messages: list[dict], generation_prompt: bool) -> str:
        return self.hf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    def encode_prompt(self, prompt: str) -> list[int]:
        """A prompt to generate from: the chat-rendered user turn, or the text with the tokenizer's
        own special tokens (e.g. BOS) when there is no template."""
        if not self.uses_chat_template:
            return list(self.hf_tokenizer(prompt)["input_ids"])
        rendered = self._render([{"role": "user", "content": prompt}], generation_prompt=True)
        return self.encode(rendered)

    def encode_chat(self, prompt: str, response: str) -> tuple[list[int], list[int]]:
        """(prompt ids, response ids): the user turn with the generation prompt, then the assistant turn
        up to and including the tokenizer's EOS when the template writes one (where generation stops)."""
        if not self.uses_chat_template:
            return self.encode_prompt(prompt), self.encode(response)
        user = {"role": "user", "content": prompt}
        head = self._render([user], generation_prompt=True)
        full = self._render([user, {"role": "assistant", "content": response}], generation_prompt=False)
        if not full.startswith(head):
            raise ChatTemplateError(
                "the chat template renders [user, assistant] without the generation-prompt rendering of [user] as "
                "its prefix, so the assistant part cannot be separated; pass chat_template=False"
            )
        response_ids = self.encode(full[len(head) :])
        if self.eos_id is not None and self.eos_id in response_ids:
            response_ids = response_ids[: response_ids.index(self.eos_id) + 1]
        return self.encode(head), response_ids

    def __repr__(self):
        return f"HFTokenizer({type(self.hf_tokenizer).__name__}, chat_template={self.uses_chat_template})"
