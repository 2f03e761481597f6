"""Which x-transformers models `kv_decode.FastDecoder` can run, judged by structure alone.

The fast decoder reuses the model's own embeddings, norms, feedforwards and residuals and
reimplements only attention, so it is exact only for the modules and flags it knows. This file is
that whitelist: `structure_problem` names the first module or flag the decoder does not reimplement.
It is the first of two gates; `kv_decode.fast_decode_support` adds a numerical probe, which catches
a flag this list misses. Kept apart from the decoder so the list of x-transformers features can grow
without crowding the decoding code.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn
from x_transformers import Decoder, TransformerWrapper  # public names

# The fast decoder reimplements x-transformers' decoding step and recognises its building blocks by
# type, so it needs internal names that a release may rename. Their absence disables the fast path
# (with one warning) instead of breaking `import self_rewarding_lm_pytorch`. The decoder takes the
# names it needs from here, so this guard is the only import of x-transformers internals.
try:
    from x_transformers.x_transformers import (
        AbsolutePositionalEmbedding,
        Attention,
        DynamicTanh,
        FeedForward,
        Identity,
        LayerNorm,
        Residual,
        RMSNorm,
        ScaleNorm,
        SimpleRMSNorm,
        TokenEmbedding,
        always,
        softclamp,
    )

    MISSING_INTERNALS: str | None = None
except ImportError as _error:
    MISSING_INTERNALS = f"this x-transformers version lacks internals the fast decoder needs ({_error})"

    class _Missing:
        """Stands in for a missing x-transformers class: no module is ever an instance of it."""

    AbsolutePositionalEmbedding = Attention = DynamicTanh = FeedForward = Identity = LayerNorm = _Missing
    Residual = RMSNorm = ScaleNorm = SimpleRMSNorm = TokenEmbedding = always = _Missing
    softclamp = None

__all__ = ["MISSING_INTERNALS", "structure_problem"]

_PER_TOKEN_NORMS = (LayerNorm, RMSNorm, ScaleNorm, SimpleRMSNorm, DynamicTanh)


def _wrapper_problem(model) -> str | None:
    if not isinstance(model, TransformerWrapper) or type(model).forward is not TransformerWrapper.forward:
        return "not an x-transformers TransformerWrapper"
    problems = {
        "token_emb is not a TokenEmbedding": type(model.token_emb) is not TokenEmbedding,
        "pos_emb is not absolute or absent": not (
            type(model.pos_emb) is AbsolutePositionalEmbedding
            or (isinstance(model.pos_emb, always) and model.pos_emb.val == 0)
        ),
        "extra token embeddings (embed_num_tokens)": model.embeds is not None,
        "ff_deep_embed": model.ff_deep_embed is not None,
        "memory tokens": model.num_memory_tokens > 0,
        "recycling or looped depth": model.recycling or model.looped,
        "cls token or pooling": model.cls_token is not None or model.attn_pool is not None or model.average_pool_embed,
        "mixture of softmax or sigsoftmax": model.to_mixture is not None or model.sigsoftmax_logits,
        "not a single logits head": model.has_multiple_heads or model.to_logits is None or model.squeeze_out_last_dim,
    }
    return next((name for name, bad in problems.items() if bad), None)


def _layers_problem(layers) -> str | None:
    problems = {
        "not a causal Decoder": not isinstance(layers, Decoder) or not layers.causal,
        "cross attention": layers.cross_attend,
        "layer types other than attention and feedforward": not set(layers.layer_types) <= {"a", "f"},
        "custom layer execution order": tuple(layers.layers_execute_order) != tuple(range(len(layers.layers))),
        "relative / alibi / polar position bias": layers.rel_pos is not None or layers.polar_pos_emb is not None,
        "rotary xpos": layers.rotary_pos_emb is not None and layers.rotary_pos_emb.scale is not None,
        "conditioning (adaptive norms or layerscale)": layers.need_condition,
        "hyper-connections / layer integration / unet skips": layers.num_residual_streams != 1
        or any(m is not None for m in layers.layer_integrators)
        or any(m is not None for m in layers.skip_combines),
        "input reinjection, value residual or residual attention": layers.reinject_input
        or layers.add_value_residual
        or layers.residual_attn,
    }
    return next((name for name, bad in problems.items() if bad), None)


def _attention_problem(attn: Attention) -> str | None:
    attend = attn.attend
    softmax = getattr(attend.attn_fn, "func", None) is F.softmax and attend.attn_fn.keywords.get("dim") == -1
    problems = {
        "non-causal attention": not attn.causal,
        "attention q/k/v are not plain linear layers": not all(
            type(m) is nn.Linear for m in (attn.to_q, attn.to_k, attn.to_v)
        ),
        "latent (MLA) attention or differing qkv inputs": attn.use_latent_q
        or attn.use_latent_kv
        or attn.to_rotateable_k is not None
        or attn.qkv_receive_diff_residuals,
        "qk norm / rmsnorm": attn.qk_norm
        or attn.q_rmsnorm is not None
        or attn.k_rmsnorm is not None
        or attn.value_rmsnorm is not None,
        "gated attention": attn.to_v_gate is not None
        or attn.to_output_gate is not None
        or attn.to_v_head_gate is not None,
        "attention extras (laser, head scale, memory kv, hybrid, orthogonal values)": attn.laser
        or attn.head_scale
        or attn.num_mem_kv > 0
        or attn.hybrid_module is not None
        or attn.orthog_projected_values
        or attn.orthog_projected_values_per_head,
        "attention biases (data-dependent alibi, relative projection)": attn.data_dependent_alibi is not None
        or attn.rel_proj_pos_bias is not None,
        "max_attend_past or partial rotary heads": attn.max_attend_past is not None
        or attn.rotate_num_heads != attn.heads,
        "attention function other than softmax": not softmax
        or attend.selective
        or attend.cog_signed
        or attend.l2_distance,
        "attention logit extras (talking heads, zero kv, sinks, softclamp, cope, inverted)": any(
            m is not None
            for m in (
                attend.pre_softmax_talking_heads,
                attend.post_softmax_talking_heads,
                attend.pre_scale_post_talking_heads,
                attend.head_attn_sink,
                attend.cope,
            )
        )
        or attend.add_zero_kv
        or attend.softclamp_logits
        or attend.inverted_attention
        or attend.flash_pack_seq,
    }
    return next((name for name, bad in problems.items() if bad), None)


def structure_problem(model) -> str | None:
    """None if every module and flag of `model` is one the fast decoder reimplements, else the first that is not."""
    problem = _wrapper_problem(model) or _layers_problem(model.attn_layers)
    if problem:
        return problem
    for layer_type, (norms, block, residual) in zip(
        model.attn_layers.layer_types, model.attn_layers.layers, strict=True
    ):
        if type(residual) is not Residual:
            return f"residual type {type(residual).__name__}"
        if not all(norm is None or type(norm) in _PER_TOKEN_NORMS for norm in norms):
            return "a norm type that is not per-token"
        expected = Attention if layer_type == "a" else FeedForward
        if type(block) is not expected:
            return f"block {type(block).__name__} where {expected.__name__} was expected"
        if layer_type == "a" and (problem := _attention_problem(block)):
            return problem
    if type(model.attn_layers.final_norm) not in (*_PER_TOKEN_NORMS, Identity, nn.Identity):
        return "final norm type"
    return None
