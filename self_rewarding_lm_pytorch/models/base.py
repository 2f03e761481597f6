"""Recognising model kinds without importing their libraries, and the one entry point `as_model`."""

from __future__ import annotations

from typing import Any

from torch import nn

from self_rewarding_lm_pytorch.core.hf_decode import is_hf_model
from self_rewarding_lm_pytorch.core.hf_tokenizer import is_hf_tokenizer

__all__ = ["as_model", "is_hf_model", "is_hf_tokenizer", "max_seq_len_of", "num_tokens_of", "unwrap_model"]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module under DDP / DataParallel / accelerate wrappers (the object that owns the attributes)."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def as_model(model: nn.Module, *, peft_config: Any = None) -> nn.Module:
    """The model as the package uses it: HF models wrapped in `HFCausalLM` (once), others unchanged.

    `peft_config` (a `peft.LoraConfig` or any peft config) applies `peft.get_peft_model` first; the
    wrapped model's parameters are the user's own, so training updates the object they passed in.
    """
    from self_rewarding_lm_pytorch.models.hf import HFCausalLM

    if isinstance(model, HFCausalLM):
        if peft_config is not None:
            model.apply_peft(peft_config)
        return model
    if is_hf_model(model):
        wrapped = HFCausalLM(model)
        if peft_config is not None:
            wrapped.apply_peft(peft_config)
        return wrapped
    if peft_config is not None:
        raise TypeError(f"peft_config applies to Hugging Face models only, not to a {type(model).__name__}")
    return model


def max_seq_len_of(model: nn.Module) -> int | None:
    """The model's context length (None when it has none), through DDP and AutoregressiveWrapper."""
    for candidate in (unwrap_model(model), getattr(unwrap_model(model), "net", None)):
        value = getattr(candidate, "max_seq_len", None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def num_tokens_of(model: nn.Module) -> int | None:
    """The size of the model's output vocabulary, or None when it does not say."""
    value = getattr(unwrap_model(model), "num_tokens", None)
    return value if isinstance(value, int) else None
