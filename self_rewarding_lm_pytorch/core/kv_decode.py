"""Decoding backends for `sampling.sample`: a fast preallocated-KV-cache decoder, and two fallbacks.

Every backend ("stepper") has the same three methods:
  `prefill() -> logits (b, v)`  encode each unique prompt once, logits for each of its sample rows;
  `step(tokens (b,)) -> logits (b, v)`  feed one token per row, get the next-token logits;
  `select(keep (b,) bool)`  drop finished rows (compaction).

Shape legend: b rows, u unique prompts, n sequence / cache slots, h query heads, g key-value heads,
d head dim, r rotary dim, v vocab.

`FastDecoder` runs an x-transformers `TransformerWrapper` with the model's own modules (embeddings,
norms, feedforwards, residuals, final norm, logits head) and reimplements only attention, against K/V
buffers allocated once at their final length and written one slot per step. x-transformers' own
`cache=` path (`XCacheStepper`) re-concatenates its cache and re-embeds the whole sequence every
step, which costs more and more as the sequence grows. `FullStepper` re-runs the full forward every
step: the slowest, but it only needs `model(ids) -> logits`, so it runs any causal model. The two
fallbacks live in `sequence_steppers` (re-exported here); this module also decides which backend
can run a model exactly (`fast_decode_support`, `xcache_support`), with a numerical probe on top of
the structural whitelist in `fast_decode_structure`.
"""

from __future__ import annotations

import functools
import warnings
import weakref

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from x_transformers import TransformerWrapper  # public names

from self_rewarding_lm_pytorch.core.fast_decode_structure import (
    MISSING_INTERNALS,
    Attention,
    always,
    softclamp,
    structure_problem,
)
from self_rewarding_lm_pytorch.core.prefix_attention import RowLayout, shared_prefix_attention
from self_rewarding_lm_pytorch.core.sequence_steppers import FullStepper, XCacheStepper

__all__ = [
    "FastDecoder",
    "FullStepper",
    "UnsupportedModelError",
    "XCacheStepper",
    "fast_decode_support",
    "xcache_support",
]


class UnsupportedModelError(ValueError):
    """The requested decoding backend cannot run this model exactly."""


def training_modes(model: nn.Module) -> dict[nn.Module, bool]:
    return {m: m.training for m in model.modules()}


def restore_training_modes(modes: dict[nn.Module, bool]) -> None:
    # Per module, not `model.train(mode)`: a user may have frozen some submodules in eval on purpose.
    for module, mode in modes.items():
        module.training = mode


_PROBED: weakref.WeakKeyDictionary[nn.Module, dict[str, str | None]] = weakref.WeakKeyDictionary()


def fast_decode_support(model: nn.Module) -> str | None:
    """None if `FastDecoder` runs `model` exactly, else the reason it cannot.

    Two gates: a whitelist of the model's structure (`fast_decode_structure`: every module and flag the
    decoder does not reimplement is checked), then, once per model object, a numerical probe that compares decoded
    logits against the model's own full forward, so a flag the whitelist misses still falls back.
    """
    if MISSING_INTERNALS is not None:
        _warn_missing_internals()
        return MISSING_INTERNALS
    problem = structure_problem(model)
    return problem if problem is not None else _probed(model, "fast")


@functools.cache
def _warn_missing_internals() -> None:
    warnings.warn(f"{MISSING_INTERNALS}; sampling falls back to a slower decoder", RuntimeWarning, stacklevel=3)


def xcache_support(model: nn.Module) -> str | None:
    """None if x-transformers' own `cache=` path reproduces the model's full forward, else why not.

    `can_cache_kv` alone is not enough: e.g. token shifting passes x-transformers' check but its
    cached decode differs from the full forward, which the probe catches.
    """
    if not isinstance(model, TransformerWrapper) or not model.can_cache_kv:
        return "not a TransformerWrapper that can cache key/values"
    if model.looped or any(getattr(m, "hybrid_module", None) is not None for m in model.modules()):
        # Their cache holds recurrent state or needs one-row decoding; per-row expansion breaks it.
        return "looped depth or hybrid attention modules"
    return _probed(model, "xtransformers")


def _probed(model, kind: str) -> str | None:
    results = _PROBED.setdefault(model, {})
    if kind not in results:
        modes = training_modes(model)
        model.eval()
        try:
            with torch.inference_mode():
                results[kind] = _probe_problem(model, kind)
        except (RuntimeError, IndexError, ValueError, AssertionError, TypeError) as error:
            # A configuration the decoder cannot even run is unsupported, not a crash: fall back.
            results[kind] = f"numerical probe failed: {type(error).__name__}: {error}"
        finally:
            restore_training_modes(modes)
    return results[kind]


def _probe_problem(model, kind: str) -> str | None:
    gen = torch.Generator().manual_seed(0)
    weight = next(model.parameters())
    short = model.max_seq_len != 0 and model.max_seq_len < 7
    # The fast decoder is probed with padding (unequal lengths); the fallback never pads.
    lengths = {"fast": (1, 2) if short else (2, 4), "xtransformers": (2, 2) if short else (4, 4)}[kind]
    prompts = [torch.randint(model.num_tokens, (n,), generator=gen).to(weight.device) for n in lengths]
    follow = torch.randint(model.num_tokens, (2, 2), generator=gen).to(weight.device)
    stepper = (FastDecoder if kind == "fast" else XCacheStepper)(model, prompts, [1, 1], max_new_tokens=3)
    got = torch.stack([stepper.prefill()] + [stepper.step(follow[:, s]) for s in range(2)], dim=1).float()
    for row, prompt in enumerate(prompts):
        want = model(torch.cat((prompt, follow[row]))[None])[0, -3:].float()
        precise = weight.dtype in (torch.float32, torch.float64)
        tolerance = (1e-4 if precise else 5e-2) * max(1.0, want.abs().max().item())
        if not torch.allclose(got[row], want, rtol=0, atol=tolerance):
            return f"numerical probe: {kind} decoding differs from the model's own forward"
    return None


def _rotate(t: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary embedding with x-transformers' interleaved pairs; t (b, h, n, d), cos/sin (b, 1, n, r)."""
    rot_dim = cos.shape[-1]
    t_rot, t_pass = t[..., :rot_dim], t[..., rot_dim:]
    x1, x2 = rearrange(t_rot, "... (d two) -> ... d two", two=2).unbind(dim=-1)
    rotated = rearrange(torch.stack((-x2, x1), dim=-1), "... d two -> ... (d two)")
    return torch.cat((t_rot * cos + rotated * sin, t_pass), dim=-1).type_as(t)  # fp32 tables, keep t's dtype


class FastDecoder:
    """Prompts left-padded to the longest; K/V buffers allocated once at their final length.

    Every row writes the same slot each step; an additive key bias hides the padding, and per-row
    positions (prompt length + step) give each row exactly the positions it has alone. The last
    sampled token is never fed back, hence max_new_tokens - 1 generated slots.

    Two cache layouts. When some prompt has several sample rows ("shared"), the prompt part of the
    cache is held once per prompt and only the generated part per row, and a step attends over both
    with `shared_prefix_attention`: a prompt's cache is read once per step for all its samples (and
    never copied into them). When every prompt has one row, each row holds its whole sequence in one
    buffer and a step is one SDPA call over it, which is faster when there is nothing to share.
    """

    def __init__(self, model, prompts: list[Tensor], counts: list[int], max_new_tokens: int):
        self.model, layers = model, model.attn_layers
        self.attns = [
            block for (_, block, _), kind in zip(layers.layers, layers.layer_types, strict=True) if kind == "a"
        ]
        device = model.token_emb.emb.weight.device
        lengths = torch.tensor([len(p) for p in prompts], device=device)
        self.prompt_len = int(lengths.max())
        self.counts = torch.tensor(counts, device=device)
        self.starts = self.prompt_len - lengths  # (u,) left padding per prompt
        self.ids = torch.stack([F.pad(p, (int(s), 0)) for p, s in zip(prompts, self.starts.tolist(), strict=True)])
        self.row_prompt = torch.arange(len(prompts), device=device).repeat_interleave(self.counts)  # (b,)
        self.row_length = lengths[self.row_prompt]  # (b,) position of each row's first generated token
        self.layout = RowLayout.of(self.row_prompt, len(prompts))
        self.shared = max(counts) > 1
        self.generated = 0
        gen_slots = max(max_new_tokens - 1, 0)
        # per layer: shared, the generated part (b, g, t, d); else the whole sequence (b, g, p + t, d)
        slots = gen_slots if self.shared else self.prompt_len + gen_slots
        self.caches = [self._buffers(attn, len(self.row_prompt), slots) for attn in self.attns]
        self.prompt_caches: list[tuple[Tensor, Tensor]] = []  # shared: per layer (u, g, p, d), from prefill
        self.key_bias = self._key_bias(slots)  # (rows of the cache, slots): 0, or -inf on padding; or None
        self.qkv = [_fused_qkv(attn) for attn in self.attns]
        self.cos: Tensor | None = None
        self.sin: Tensor | None = None
        if layers.rotary_pos_emb is not None:
            freqs, _ = layers.rotary_pos_emb(torch.arange(max(self.prompt_len + gen_slots, 1), device=device))
            self.cos, self.sin = freqs[0].cos(), freqs[0].sin()  # (n, r)

    @staticmethod
    def _buffers(attn: Attention, rows: int, slots: int) -> tuple[Tensor, Tensor]:
        dk, dv = attn.to_k.out_features // attn.kv_heads, attn.to_v.out_features // attn.kv_heads
        like = attn.to_k.weight
        return (
            like.new_empty(rows, attn.kv_heads, slots, dk),
            like.new_empty(rows, attn.kv_heads, slots, dv),
        )

    def _key_bias(self, slots: int) -> Tensor | None:
        if not bool((self.starts > 0).any()):
            return None
        width = self.prompt_len if self.shared else slots  # shared: over the prompt cache only
        is_pad = torch.arange(width, device=self.starts.device) < self.starts[:, None]  # (u, width)
        dtype = self.model.token_emb.emb.weight.dtype
        return torch.zeros(is_pad.shape, dtype=dtype, device=is_pad.device).masked_fill(is_pad, float("-inf"))

    def _embed(self, ids: Tensor, pos: Tensor) -> Tensor:
        model = self.model
        x = model.token_emb(ids)
        if not isinstance(model.pos_emb, always):
            x = x + model.pos_emb(ids, pos=pos)
        return model.project_emb(model.post_emb_norm(x))

    def _attention(self, index: int, attn: Attention, x: Tensor, pos: Tensor, mask, causal: bool) -> Tensor:
        weight, bias, splits = self.qkv[index]
        q, k, v = F.linear(x, weight, bias).split(splits, dim=-1)
        q = rearrange(q, "b n (h d) -> b h n d", h=attn.heads)
        k = rearrange(k, "b n (g d) -> b g n d", g=attn.kv_heads)
        v = rearrange(v, "b n (g d) -> b g n d", g=attn.kv_heads)
        if self.cos is not None and self.sin is not None:
            cos = rearrange(self.cos[pos], "b n r -> b 1 n r")
            sin = rearrange(self.sin[pos], "b n r -> b 1 n r")
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        k_cache, v_cache = self.caches[index]
        n = x.shape[1]
        if causal:  # prefill: the u prompts, each once
            if self.shared:
                self.prompt_caches.append((k.contiguous(), v.contiguous()))
            else:
                k_cache[:, :, :n], v_cache[:, :, :n] = k, v
            return attn.to_out(rearrange(_sdpa(attn, q, k, v, mask, causal=True), "b h n d -> b n (h d)"))
        slot = self.generated if self.shared else self.prompt_len + self.generated
        k_cache[:, :, slot], v_cache[:, :, slot] = k[:, :, 0], v[:, :, 0]
        k, v = k_cache[:, :, : slot + 1], v_cache[:, :, : slot + 1]
        if self.shared:
            prompt_k, prompt_v = self.prompt_caches[index]
            out = shared_prefix_attention(
                q[:, :, 0], prompt_k, prompt_v, self.key_bias, k, v, self.layout, attn.attend.scale
            )
            return attn.to_out(rearrange(out, "b h d -> b 1 (h d)"))
        return attn.to_out(rearrange(_sdpa(attn, q, k, v, mask, causal=False), "b h n d -> b n (h d)"))

    def _layers(self, x: Tensor, pos: Tensor, mask, causal: bool) -> Tensor:
        layers, index = self.model.attn_layers, 0
        for kind, ((pre_norm, post_branch_norm, post_main_norm), block, residual_fn) in zip(
            layers.layer_types, layers.layers, strict=True
        ):
            residual = x
            if pre_norm is not None:
                x = pre_norm(x)
            if kind == "a":
                out = self._attention(index, block, x, pos, mask, causal)
                index += 1
            else:
                out = block(x)
            if post_branch_norm is not None:
                out = post_branch_norm(out)
            x = residual_fn(out, residual)
            if post_main_norm is not None:
                x = post_main_norm(x)
        if layers.softclamp_output:
            x = softclamp(x, layers.softclamp_output_value)
        return layers.final_norm(x)

    def prefill(self) -> Tensor:
        n = self.prompt_len
        arange = torch.arange(n, device=self.ids.device)
        pos = (arange - self.starts[:, None]).clamp(min=0)  # (u, n)
        mask = None
        if self.key_bias is not None:
            # A pad query may see only itself: a fully masked row would turn into NaN and spread.
            key_ok = arange >= self.starts[:, None]
            allowed = (arange[None, :] <= arange[:, None]) & (
                key_ok[:, None, :] | torch.eye(n, dtype=torch.bool, device=arange.device)
            )
            mask = rearrange(allowed, "u i j -> u 1 i j")
        x = self._layers(self._embed(self.ids, pos), pos, mask, causal=True)
        logits = self.model.to_logits(x[:, -1])
        return logits.repeat_interleave(self.counts, dim=0)

    def step(self, tokens: Tensor) -> Tensor:
        pos = (self.row_length + self.generated)[:, None]  # (b, 1)
        mask = None
        if self.key_bias is not None and not self.shared:  # one bias for all layers of this step
            mask = rearrange(self.key_bias[:, : self.prompt_len + self.generated + 1], "b j -> b 1 1 j")
        x = self._layers(self._embed(tokens[:, None], pos), pos, mask, causal=False)
        self.generated += 1
        return self.model.to_logits(x[:, 0])

    def select(self, keep: Tensor) -> None:
        self.caches = [(k[keep], v[keep]) for k, v in self.caches]
        self.row_prompt, self.row_length = self.row_prompt[keep], self.row_length[keep]
        alive = torch.zeros(len(self.starts), dtype=torch.bool, device=keep.device)
        alive[self.row_prompt] = True
        if not bool(alive.all()):  # prompts without a row left are never read again: drop them
            self.prompt_caches = [(k[alive], v[alive]) for k, v in self.prompt_caches]
            self.starts = self.starts[alive]
            self.row_prompt = (torch.cumsum(alive, 0) - 1)[self.row_prompt]
            if self.key_bias is not None:
                self.key_bias = self.key_bias[alive]
            if not bool((self.starts > 0).any()):
                self.key_bias = None
        self.layout = RowLayout.of(self.row_prompt, len(self.starts))


def _fused_qkv(attn: Attention) -> tuple[Tensor, Tensor | None, list[int]]:
    """One matmul instead of three per layer and step (concatenated once per call, not per step)."""
    projections = (attn.to_q, attn.to_k, attn.to_v)
    bias = None
    if any(p.bias is not None for p in projections):
        bias = torch.cat([p.bias if p.bias is not None else p.weight.new_zeros(p.out_features) for p in projections])
    return torch.cat([p.weight for p in projections]), bias, [p.out_features for p in projections]


def _sdpa(attn: Attention, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool) -> Tensor:
    gqa = attn.kv_heads < attn.heads
    if gqa:  # x-transformers pairs query head i with kv head i % g; SDPA pairs it with i // (h / g)
        q = rearrange(q, "b (r g) n d -> b (g r) n d", g=attn.kv_heads)
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=causal and mask is None, scale=attn.attend.scale, enable_gqa=gqa
    )
    return rearrange(out, "b (g r) n d -> b (r g) n d", g=attn.kv_heads) if gqa else out
