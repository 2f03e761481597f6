"""KV-cached decoding of Hugging Face causal LMs for `sampling.sample` (the "hf" backend).

Shape legend: u unique prompts, b rows (prompts x samples), n prompt length, v vocab.

The planner hands this stepper prompts of one length, so no padding, attention mask or position ids
are needed: every row sees exactly the positions it has alone, and greedy decoding reproduces
`model.generate(do_sample=False)`. Each unique prompt is encoded once; the cache (HF's
`DynamicCache`) is then expanded to its sample rows with `reorder_cache` and compacted with
`batch_select_indices` when rows finish. `transformers` is imported only when a stepper is built.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["HFCacheStepper", "hf_model_inside", "is_hf_model"]


def is_hf_model(model) -> bool:
    """True for a `transformers` model or a `peft` wrapper around one, decided without importing either."""
    return isinstance(model, nn.Module) and any(
        cls.__module__.split(".")[0] in ("transformers", "peft") for cls in type(model).__mro__
    )


def hf_model_inside(model: Any) -> Any:
    """The HF model itself, whether passed bare or inside the package's `HFCausalLM` (its `.hf`)."""
    if is_hf_model(model):
        return model
    inner = getattr(model, "hf", None)
    return inner if is_hf_model(inner) else None


def _cache_keyword(model: Any) -> str:
    """`cache` in recent transformers, `past_key_values` before (still accepted, with a warning)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(type(base).forward).parameters else "past_key_values"


class HFCacheStepper:
    """`prefill() / step(tokens) / select(keep)` over an HF model's own cache (see module docstring)."""

    def __init__(self, model: nn.Module, prompts: list[Tensor], counts: list[int], max_new_tokens: int):
        if len({len(p) for p in prompts}) != 1:
            raise ValueError("HFCacheStepper takes prompts of one length; the planner groups them")
        self.model: Any = model
        self.ids = torch.stack(prompts)  # (u, n)
        device = self.ids.device
        self.expand = torch.arange(len(prompts), device=device).repeat_interleave(torch.tensor(counts, device=device))
        self.cache: Any = None
        self.cache_keyword = _cache_keyword(model)

    def _forward(self, ids: Tensor) -> Tensor:
        # The cache object is updated in place by the forward; it stays ours across steps.
        out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1, **{self.cache_keyword: self.cache})
        return out.logits[:, -1]

    def prefill(self) -> Tensor:
        from transformers import DynamicCache

        self.cache = DynamicCache()
        logits = self._forward(self.ids)  # (u, v): each unique prompt once
        self.cache.reorder_cache(self.expand)  # (u, ...) -> (b, ...): each prompt's rows share its prefix
        return logits.index_select(0, self.expand)

    def step(self, tokens: Tensor) -> Tensor:
        return self._forward(tokens[:, None])

    def select(self, keep: Tensor) -> None:
        self.cache.batch_select_indices(keep.nonzero()[:, 0])
