"""Recognising model kinds without importing their libraries, and the one entry point `as_model`."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from self_rewarding_lm_pytorch.core.hf_decode import is_hf_model
from self_rewarding_lm_pytorch.core.hf_tokenizer import is_hf_tokenizer
from self_rewarding_lm_pytorch.core.modules import unwrap_model

__all__ = [
    "AdapterOffReference",
    "AdapterSnapshotReference",
    "as_model",
    "enable_gradient_checkpointing",
    "frozen_reference",
    "is_hf_model",
    "is_hf_tokenizer",
    "live_reference_reads_policy",
    "max_seq_len_of",
    "model_and_tokenizer",
    "num_tokens_of",
    "unwrap_model",
]


def as_model(model: nn.Module, *, peft_config: Any = None, seed: int | None = None) -> nn.Module:
    """The model as the package uses it: HF models wrapped in `HFCausalLM` (once), others unchanged.

    `peft_config` (a `peft.LoraConfig` or any peft config) applies `peft.get_peft_model` first; the
    wrapped model's parameters are the user's own, so training updates the object they passed in.
    `seed` seeds the adapter's initialisation (so runs with one seed start from one adapter).
    """
    from self_rewarding_lm_pytorch.models.hf import HFCausalLM

    if isinstance(model, HFCausalLM):
        if peft_config is not None:
            model.apply_peft(peft_config, seed=seed)
        return model
    if is_hf_model(model):
        wrapped = HFCausalLM(model)
        if peft_config is not None:
            wrapped.apply_peft(peft_config, seed=seed)
        return wrapped
    if peft_config is not None:
        raise TypeError(f"peft_config applies to Hugging Face models only, not to a {type(model).__name__}")
    return model


def model_and_tokenizer(
    model: nn.Module,
    tokenizer: Any = None,
    *,
    peft_config: Any = None,
    chat_template: bool | None = None,
    seed: int | None = None,
    **kwargs,
) -> tuple[nn.Module, Any]:
    """What every trainer does with the model and tokenizer it is given: `as_model`, then `as_tokenizer`.

    A Hugging Face model needs its own tokenizer (the byte-level default would not match its vocabulary).
    """
    from self_rewarding_lm_pytorch.core.tokenizer import as_tokenizer
    from self_rewarding_lm_pytorch.models.hf import HFCausalLM

    model = as_model(model, peft_config=peft_config, seed=seed)
    has_callables = kwargs.get("tokenizer_encode") is not None
    if isinstance(model, HFCausalLM) and tokenizer is None and not has_callables:
        raise ValueError("a Hugging Face model needs its tokenizer: pass tokenizer=AutoTokenizer.from_pretrained(...)")
    return model, as_tokenizer(tokenizer, chat_template=chat_template, **kwargs)


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


class AdapterOffReference(nn.Module):
    """The policy with its LoRA adapter switched off: the base model, with no second copy in memory.

    The policy is held outside the module tree, so `.eval()`, `.requires_grad_(False)` and `.to()` on
    the reference never touch the policy being trained.
    """

    policy: Any

    def __init__(self, policy: nn.Module):
        super().__init__()
        object.__setattr__(self, "policy", policy)

    def forward(self, input_ids, **kwargs):
        with self.policy.adapter_disabled():
            return self.policy(input_ids, **kwargs)


class AdapterSnapshotReference(nn.Module):
    """The policy with its LoRA adapter as it was when this reference was made: the adapter's tensors
    are snapshotted (adapter-sized memory, no copy of the base model) and swapped in, bit for bit,
    around each reference forward, then swapped back. Call it before the policy's own forward of a
    step (as the trainers do), never between that forward and its backward.
    """

    policy: Any
    snapshot: dict[str, torch.Tensor]

    def __init__(self, policy: nn.Module):
        super().__init__()
        object.__setattr__(self, "policy", policy)
        self.names = [name for name, p in policy.named_parameters() if "lora_" in name]
        params = dict(policy.named_parameters())
        object.__setattr__(self, "snapshot", {name: params[name].detach().clone() for name in self.names})

    def forward(self, input_ids, **kwargs):
        params = dict(self.policy.named_parameters())
        current = {name: params[name].detach().clone() for name in self.names}
        with torch.no_grad():
            for name in self.names:
                params[name].copy_(self.snapshot[name])
        try:
            with torch.no_grad():
                return self.policy(input_ids, **kwargs)
        finally:
            with torch.no_grad():
                for name in self.names:
                    params[name].copy_(current[name])


def live_reference_reads_policy(model: nn.Module) -> bool:
    """True when `frozen_reference(model)` is a view of the policy's own weights (a LoRA model), not a copy."""
    from self_rewarding_lm_pytorch.models.hf import HFCausalLM

    return isinstance(model, HFCausalLM) and model.is_peft


def frozen_reference(model: nn.Module) -> nn.Module:
    """A frozen reference equal to `model` as it is now, for live-reference DPO / SPIN / PPO.

    A LoRA model never gets a second copy of its base: while its adapter is still the identity
    (peft initialises B = 0) the reference is the adapter-off view; once trained, a snapshot of the
    adapter swapped in for each reference forward. Other models are deep-copied.
    """
    import copy

    from self_rewarding_lm_pytorch.models.hf import HFCausalLM

    if isinstance(model, HFCausalLM) and model.is_peft:
        return AdapterOffReference(model) if model.adapter_is_identity() else AdapterSnapshotReference(model)
    return copy.deepcopy(model).eval().requires_grad_(False)


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Turn on the model's own gradient checkpointing (Hugging Face's `gradient_checkpointing_enable`).

    The installed x-transformers has none, so asking for it there is an error rather than a silent no-op.
    """
    from self_rewarding_lm_pytorch.models.hf import HFCausalLM

    model = unwrap_model(model)
    inner = getattr(model, "net", None)  # a reward model around an HF network
    if isinstance(inner, HFCausalLM):
        model = inner
    if isinstance(model, HFCausalLM):
        model.enable_gradient_checkpointing()
        return
    raise ValueError(
        f"gradient_checkpointing=True: {type(model).__name__} has no gradient checkpointing of its own "
        "(x-transformers' TransformerWrapper does not offer one); set it to False"
    )
