"""The two fallback decoding backends of `sampling.sample`, for models the fast decoder rejects.

Both take prompts of one length (the sampler groups them), so no padding is ever needed and any
causal model is exact: `XCacheStepper` runs x-transformers' own `cache=` path, `FullStepper` re-runs
the full forward every step (it needs only `model(ids) -> logits (b, n, v)`). Same three methods as
`kv_decode.FastDecoder`: prefill, step, select.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["FullStepper", "XCacheStepper"]


class _SequenceStepper:
    """Rows that share one prompt length, so no padding is ever needed: any causal model is exact."""

    def __init__(self, model, prompts: list[Tensor], counts: list[int], max_new_tokens: int):
        if len({len(p) for p in prompts}) != 1:
            raise ValueError("fallback steppers take prompts of one length; the planner groups them")
        self.model = model
        self.ids = torch.stack(prompts)  # (u, n)
        self.counts = torch.tensor(counts, device=self.ids.device)
        rows_ids = self.ids.repeat_interleave(self.counts, dim=0)
        self.seq = F.pad(rows_ids, (0, max_new_tokens))  # preallocated (b, n + new)
        self.length = self.ids.shape[1]

    def _append(self, tokens: Tensor) -> None:
        self.seq[:, self.length] = tokens
        self.length += 1


class FullStepper(_SequenceStepper):
    """No cache: the full forward every step; needs only `model(ids) -> logits (b, n, v)`."""

    def prefill(self) -> Tensor:
        return self.model(self.ids)[:, -1].repeat_interleave(self.counts, dim=0)

    def step(self, tokens: Tensor) -> Tensor:
        self._append(tokens)
        return self.model(self.seq[:, : self.length])[:, -1]

    def select(self, keep: Tensor) -> None:
        self.seq = self.seq[keep]


class XCacheStepper(_SequenceStepper):
    """x-transformers' own `cache=` path (`return_intermediates=True`), for models FastDecoder rejects."""

    def prefill(self) -> Tensor:
        logits, self.cache = self.model(self.ids, return_intermediates=True)
        self._map_cache(lambda t: t.repeat_interleave(self.counts, dim=0))
        return logits[:, -1].repeat_interleave(self.counts, dim=0)

    def _map_cache(self, fn) -> None:
        for inter in self.cache.attn_intermediates:
            inter.cached_kv = tuple(fn(t) if torch.is_tensor(t) else t for t in inter.cached_kv)

    def step(self, tokens: Tensor) -> Tensor:
        self._append(tokens)
        ids = (
            self.seq[:, self.length - 1 : self.length]
            if self.model.input_not_include_cache
            else self.seq[:, : self.length]
        )
        logits, self.cache = self.model(ids, cache=self.cache, return_intermediates=True)
        return logits[:, -1]

    def select(self, keep: Tensor) -> None:
        self.seq = self.seq[keep]
        self._map_cache(lambda t: t[keep])
