"""One decoding step of attention over a prompt cache shared by all samples of a prompt.

When N samples continue one prompt, their keys and values over the prompt are identical. Instead of
copying the prompt's cache into every sample row and reading it N times per step, the cache is split:
the prompt part is held once per prompt, the generated part once per row. A step scores each row's
query against its prompt's keys (the N queries of a prompt in one matmul, so the prompt cache is
read once) and against its own generated keys, takes ONE softmax over the concatenated scores (the
same normalisation as attention over the whole sequence), and sums the two value products. The
result equals attention over the expanded cache up to floating-point summation order.

Shapes: b rows, u prompts, m grid slots per prompt, h query heads = r x g (x-transformers pairs query
head i with key-value head i % g, so h is laid out "(r g)"), g key-value heads, p prompt positions,
t generated positions, d head dim.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor

__all__ = ["RowLayout", "shared_prefix_attention"]


@dataclass(frozen=True)
class RowLayout:
    """Where each row's query sits in the (u, m) grid of prompts x sample slots.

    `slot` (b,): row i sits at flat grid position slot[i] = prompt * m + its rank among that prompt's
    rows. `dense`: the grid is exactly the rows in order (every prompt has m rows), so no gather.
    """

    slot: Tensor
    num_prompts: int
    per_prompt: int
    dense: bool

    @staticmethod
    def of(row_prompt: Tensor, num_prompts: int) -> RowLayout:
        """From each row's prompt index (b,), non-decreasing (rows are prompt-major)."""
        counts = torch.bincount(row_prompt, minlength=num_prompts)
        per_prompt = max(int(counts.max()), 1) if len(row_prompt) else 1
        first = torch.cumsum(counts, 0) - counts  # (u,) index of each prompt's first row
        rank = torch.arange(len(row_prompt), device=row_prompt.device) - first[row_prompt]
        slot = row_prompt * per_prompt + rank
        dense = len(row_prompt) == num_prompts * per_prompt  # then slot == arange(b): sorted, no gaps
        return RowLayout(slot, num_prompts, per_prompt, dense)

    def to_grid(self, rows: Tensor) -> Tensor:
        """(b, ...) -> (u * m, ...), zeros where a prompt has fewer than m rows."""
        if self.dense:
            return rows
        grid = rows.new_zeros((self.num_prompts * self.per_prompt, *rows.shape[1:]))
        return grid.index_copy_(0, self.slot, rows)

    def to_rows(self, grid: Tensor) -> Tensor:
        """(u * m, ...) -> (b, ...)."""
        return grid if self.dense else grid.index_select(0, self.slot)


def shared_prefix_attention(
    q: Tensor,
    prompt_k: Tensor,
    prompt_v: Tensor,
    prompt_bias: Tensor | None,
    gen_k: Tensor,
    gen_v: Tensor,
    layout: RowLayout,
    scale: float,
) -> Tensor:
    """Attention of one new query per row over [its prompt's cache | its own generated cache].

    q (b, h, d); prompt_k/v (u, g, p, d); prompt_bias (u, p) additive (0 or -inf for padding) or None;
    gen_k/v (b, g, t, d); returns (b, h, d). A prompt with no row in the grid costs one matmul row of
    zeros per slot and is never read back.
    """
    g = prompt_k.shape[1]
    p, m = prompt_k.shape[2], layout.per_prompt
    q = rearrange(q, "b (r g) d -> b g r d", g=g)
    grid_q = rearrange(layout.to_grid(q), "(u m) g r d -> u g (m r) d", m=m)
    prompt_scores = torch.matmul(grid_q, prompt_k.transpose(-1, -2)) * scale  # (u, g, m r, p)
    if prompt_bias is not None:
        prompt_scores = prompt_scores + rearrange(prompt_bias, "u p -> u 1 1 p")
    prompt_scores = layout.to_rows(rearrange(prompt_scores, "u g (m r) p -> (u m) g r p", m=m))
    gen_scores = torch.matmul(q, gen_k.transpose(-1, -2)) * scale  # (b, g, r, t)
    probs = torch.cat((prompt_scores, gen_scores), dim=-1).softmax(dim=-1)
    prompt_probs = rearrange(layout.to_grid(probs[..., :p]), "(u m) g r p -> u g (m r) p", m=m)
    from_prompt = rearrange(torch.matmul(prompt_probs, prompt_v), "u g (m r) d -> (u m) g r d", m=m)
    out = layout.to_rows(from_prompt) + torch.matmul(probs[..., p:], gen_v)
    return rearrange(out, "b g r d -> b (r g) d")
