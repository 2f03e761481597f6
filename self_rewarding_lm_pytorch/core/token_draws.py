"""How `sampling.sample` draws a token from logits: per-row random numbers, filtering, inverse CDF.

Randomness: one base key is drawn from `generator` (or torch's global RNG) per call; row r's uniform
at step t is a pure hash of (base key, r, t), and a token is drawn by inverse CDF from that single
uniform. So a row's random numbers do not depend on the batch it is decoded in, on `batch_size`, on
row compaction, or on other rows finishing early. These are pure functions of their inputs, apart
from the one base-key draw, and hold everything that decides which token a row gets; the decoding
loop that calls them lives in `sampling`.

Shape legend: b rows, v vocab.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["draw_base_key", "filter_logits", "row_keys", "sample_from_logits", "splitmix64", "step_uniforms"]

_GAMMA = 0x9E3779B97F4A7C15  # splitmix64's increment (the golden ratio in 64 bits)


def _to_uint64_signed(value: int) -> int:
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


def _shift_right(x: Tensor, bits: int) -> Tensor:
    # torch's >> on int64 is arithmetic; mask to make it the logical shift splitmix64 needs.
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def splitmix64(x: Tensor) -> Tensor:
    """The splitmix64 finalizer on int64 tensors (two's-complement wraparound = uint64 arithmetic)."""
    x = x + _to_uint64_signed(_GAMMA)
    x = (x ^ _shift_right(x, 30)) * _to_uint64_signed(0xBF58476D1CE4E5B9)
    x = (x ^ _shift_right(x, 27)) * _to_uint64_signed(0x94D049BB133111EB)
    return x ^ _shift_right(x, 31)


def draw_base_key(generator: torch.Generator | None) -> Tensor:
    """The call's one draw from `generator` (or torch's global RNG): a scalar int64 on CPU."""
    rng_device = generator.device if generator is not None else "cpu"
    return torch.randint(-(2**63), 2**63 - 1, (), generator=generator, dtype=torch.long, device=rng_device).cpu()


def row_keys(base: Tensor, rows: Tensor) -> Tensor:
    """(b,) int64 keys of the global rows `rows`: the base key hashed with each row's index."""
    return splitmix64(base + rows * _to_uint64_signed(_GAMMA))


def step_uniforms(row_keys: Tensor, step: int) -> Tensor:
    """One uniform in [0, 1) per row for this step, from the top 53 bits of a hash: (b,) float64."""
    bits = _shift_right(splitmix64(row_keys + _to_uint64_signed((step + 1) * _GAMMA)), 11)
    return bits.double() * 2.0**-53


def filter_logits(
    logits: Tensor, *, top_k: int | None = None, top_p: float | None = None, min_p: float | None = None
) -> Tensor:
    """Logits with the tokens outside the allowed set set to -inf; applied in the order k, p, min-p.

    top_k: the k largest (ties with the k-th value are kept). top_p: the smallest prefix of the
    sorted distribution whose mass reaches p (the most likely token always stays). min_p: tokens
    with probability >= min_p times the most likely token's.
    """
    out = logits
    if top_k is not None and top_k < out.shape[-1]:
        kth = out.topk(top_k, dim=-1).values[..., -1:]
        out = out.masked_fill(out < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = out.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        mass_before = F.pad(probs.cumsum(dim=-1)[..., :-1], (1, 0))  # exclusive cumsum, exact 0 first
        remove = torch.zeros_like(out, dtype=torch.bool).scatter(-1, order, mass_before >= top_p)
        out = out.masked_fill(remove, float("-inf"))
    if min_p is not None and min_p > 0.0:
        probs = out.softmax(dim=-1)
        out = out.masked_fill(probs < min_p * probs.amax(dim=-1, keepdim=True), float("-inf"))
    return out


def sample_from_logits(logits: Tensor, uniforms: Tensor) -> Tensor:
    """Inverse-CDF draw, one uniform per row: (b, v), (b,) -> (b,) long.

    A token with zero probability has an empty CDF interval, so it can never be drawn; the clamp to
    the last positive token guards the u * total == total rounding edge.
    """
    probs = logits.softmax(dim=-1, dtype=torch.float64)
    cdf = probs.cumsum(dim=-1)
    target = uniforms.to(cdf.device)[:, None] * cdf[:, -1:]
    index = torch.searchsorted(cdf, target, right=True)[:, 0]
    positive = probs > 0
    last_positive = positive.shape[-1] - 1 - positive.flip(-1).int().argmax(dim=-1)
    return torch.minimum(index, last_positive)
