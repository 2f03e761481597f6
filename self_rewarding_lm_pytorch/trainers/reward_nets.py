"""The networks a `RewardModel` wraps, checked when it is built: an x-transformers `TransformerWrapper`
(built from sizes, or given) or a Hugging Face causal LM behind `HFCausalLM`; and its tokenizer."""

from __future__ import annotations

from typing import Any

from torch import nn

from self_rewarding_lm_pytorch.core.hf_tokenizer import HFTokenizer, is_hf_tokenizer
from self_rewarding_lm_pytorch.core.tokenizer import ByteTokenizer, as_tokenizer
from self_rewarding_lm_pytorch.models import as_model

__all__ = ["hf_net", "reward_tokenizer", "x_transformers_net"]


def x_transformers_net(net: nn.Module | None, sizes: dict, encoder: bool) -> tuple[nn.Module, int, int | None]:
    """(network, hidden dim, embedded ids) of an x-transformers net, built from `sizes` when `net` is None."""
    if net is None:
        missing = [k for k, v in sizes.items() if v is None]
        if missing:
            raise ValueError(
                f"RewardModel needs net= or all of num_tokens, max_seq_len, dim, depth, heads; missing {missing}"
            )
        from x_transformers import Decoder, Encoder, TransformerWrapper

        layers = (Encoder if encoder else Decoder)(dim=sizes["dim"], depth=sizes["depth"], heads=sizes["heads"])
        net = TransformerWrapper(
            num_tokens=sizes["num_tokens"], max_seq_len=sizes["max_seq_len"], attn_layers=layers, return_only_embed=True
        )
    if not hasattr(net, "attn_layers") or not hasattr(net, "max_seq_len"):
        raise TypeError(
            f"net must be an x-transformers TransformerWrapper or a Hugging Face causal LM, got {type(net).__name__}"
        )
    wrapper: Any = net  # an x-transformers TransformerWrapper (untyped)
    embedded = wrapper.token_emb.emb.num_embeddings if hasattr(wrapper, "token_emb") else None
    return net, int(wrapper.attn_layers.dim), embedded


def hf_net(net: nn.Module, tokenizer: Any, peft_config: Any) -> tuple[nn.Module, int, int | None]:
    """(HFCausalLM, hidden size, embedded ids) of a Hugging Face causal LM (TypeError for any other HF model)."""
    if tokenizer is None:
        raise ValueError("a Hugging Face model needs its tokenizer: pass tokenizer=AutoTokenizer.from_pretrained(...)")
    wrapped: Any = as_model(net, peft_config=peft_config)
    embeddings, lm_head = wrapped.hf.get_input_embeddings(), wrapped.hf.get_output_embeddings()
    if lm_head is not None and lm_head.weight is not embeddings.weight:
        # The reward never computes logits: an untied LM head is frozen, so every trainable parameter
        # gets a gradient (DDP waits for each one) and the optimizer holds no state for it.
        lm_head.requires_grad_(False)
    return wrapped, wrapped.hidden_size, getattr(embeddings, "num_embeddings", None)


def reward_tokenizer(tokenizer: Any, chat_template: bool | None) -> Any:
    """The tokenizer a reward model scores with: a Hugging Face one adapted (`as_tokenizer`, its chat
    template on unless `chat_template=False`), any other kept as given, None the `ByteTokenizer`."""
    if tokenizer is None:
        return ByteTokenizer()
    if is_hf_tokenizer(tokenizer) or isinstance(tokenizer, HFTokenizer):
        return as_tokenizer(tokenizer, chat_template=chat_template)
    return tokenizer
