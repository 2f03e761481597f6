"""`HFCausalLM`: a Hugging Face causal LM (or a `peft.PeftModel`) behind the package's model interface.

Shapes: b batch, n sequence, v vocab.

The wrapper adds no parameters: its state_dict is the HF model's under the prefix `hf.`, so the
package's own checkpoints (safetensors of the whole module, for exact resume) work unchanged, while
`save_pretrained` writes the folder the HF ecosystem reads.
"""

from __future__ import annotations

import copy
import os
import shutil
from collections.abc import Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from torch import Tensor, nn

__all__ = ["HFCausalLM"]


class HFCausalLM(nn.Module):
    """`model(input_ids) -> logits` for an HF causal LM; see the `models` package docstring."""

    hf: Any  # the transformers model or peft.PeftModel (typed loosely: transformers is optional)

    def __init__(self, model: nn.Module):
        super().__init__()
        if not hasattr(model, "get_output_embeddings") or not hasattr(model, "config"):
            raise TypeError(f"{type(model).__name__} is not a Hugging Face causal LM (no config/output embeddings)")
        if not _is_causal_lm(model):
            raise TypeError(
                f"{type(model).__name__} is not a Hugging Face causal LM (an encoder or encoder-decoder model): "
                "load it with AutoModelForCausalLM"
            )
        self.hf = model

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, *, return_logits_and_embeddings: bool = False
    ):
        """logits (b, n, v); with `return_logits_and_embeddings` also the final hidden states (b, n, d),
        the keyword x-transformers uses, so a value head reads either kind of model the same way."""
        # Right-padded batches need no attention mask: padding comes after every real token.
        out = self.hf(
            input_ids=input_ids,
            attention_mask=attention_mask,
            use_cache=False,
            output_hidden_states=return_logits_and_embeddings,
        )
        return (out.logits, out.hidden_states[-1]) if return_logits_and_embeddings else out.logits

    def last_hidden_state(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """(b, n, d) final hidden states (after the final norm: what the LM head reads) from the decoder
        stack alone, LoRA layers included, without computing the (b, n, v) logits."""
        base = self.hf.get_base_model() if self.is_peft else self.hf
        out = base.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state

    # --- what the rest of the package reads ---

    @property
    def config(self):
        return self.hf.config

    @property
    def max_seq_len(self) -> int | None:
        value = getattr(self.config, "max_position_embeddings", None)
        return value if isinstance(value, int) and value > 0 else None

    @property
    def num_tokens(self) -> int:
        head = self.hf.get_output_embeddings()
        return int(head.weight.shape[0]) if head is not None else int(self.config.vocab_size)

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    @property
    def is_peft(self) -> bool:
        return hasattr(self.hf, "peft_config") and hasattr(self.hf, "disable_adapter")

    # --- LoRA ---

    def apply_peft(self, peft_config: Any, *, seed: int | None = None) -> None:
        """Wrap the model with `peft.get_peft_model(model, peft_config)`: only adapter weights train.

        `seed` makes the adapter's random initialisation repeatable without touching the global RNG.
        """
        if self.is_peft:
            raise ValueError("the model is already a peft.PeftModel; pass peft_config only for a plain model")
        import torch
        from peft import get_peft_model

        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            self.hf = get_peft_model(self.hf, peft_config)

    def adapter_is_identity(self) -> bool:
        """True when every LoRA update is zero (B = 0, as peft initialises it): disabled == enabled."""
        if not self.is_peft:
            return False
        b_weights = [p for name, p in self.hf.named_parameters() if "lora_B" in name]
        return bool(b_weights) and all(not bool(p.detach().any()) for p in b_weights)

    def adapter_disabled(self):
        """Context in which the model runs without its adapter (the base model), for a live reference."""
        return self.hf.disable_adapter() if self.is_peft else nullcontext()

    # --- training switches ---

    def enable_gradient_checkpointing(self) -> None:
        base = self.hf.get_base_model() if self.is_peft else self.hf
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if self.is_peft:
            # Frozen embeddings give checkpointed blocks inputs without grad; peft's documented fix.
            base.enable_input_require_grads()

    # --- files ---

    def save_pretrained(
        self,
        folder: str | os.PathLike,
        *,
        tokenizer: Any = None,
        merged: bool = False,
        extra_files: Mapping[str, bytes] | None = None,
    ) -> Path:
        """Write `folder` with `save_pretrained` (the model, or the adapter of a PeftModel) plus the
        tokenizer; `merged=True` also writes `folder/merged/` with the LoRA update folded in;
        `extra_files` ({name: bytes}) go into `folder` with them (e.g. a reward head's weights).

        Written into a temp folder renamed into place, so `folder` is always complete.
        """
        folder = Path(folder)
        tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            self.hf.save_pretrained(tmp)
            for name, data in (extra_files or {}).items():
                (tmp / name).write_bytes(data)
            hf_tokenizer = getattr(tokenizer, "hf_tokenizer", tokenizer)
            if hf_tokenizer is not None and hasattr(hf_tokenizer, "save_pretrained"):
                hf_tokenizer.save_pretrained(tmp)
            if merged and self.is_peft:
                # A copy, so the in-memory model keeps its adapter bit for bit (unmerging is not exact).
                copy.deepcopy(self.hf).merge_and_unload().save_pretrained(tmp / "merged")
                if hf_tokenizer is not None and hasattr(hf_tokenizer, "save_pretrained"):
                    hf_tokenizer.save_pretrained(tmp / "merged")
            old = folder.with_name(f".{folder.name}.{os.getpid()}.old")
            if folder.exists():
                os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return folder


def _is_causal_lm(model: Any) -> bool:
    """A decoder-only LM: it can generate, is not encoder-decoder, and is not a BERT-style model whose
    config says it is not a decoder (`is_decoder=False`: bidirectional attention)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config
    can_generate = getattr(base, "can_generate", None)
    return (
        callable(can_generate)
        and bool(can_generate())
        and not getattr(config, "is_encoder_decoder", False)
        and getattr(config, "is_decoder", True) is not False
    )
