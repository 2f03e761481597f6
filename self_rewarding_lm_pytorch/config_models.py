"""Objects built from a pipeline file's [model], tokenizer and [judge] settings.

Apart from config_file.py (parsing and validation) because these are the steps that construct
things, each turning the library's own errors into a `ConfigError` naming the section; the CLI's
tools build the same objects from a file that holds only these sections.
"""

from __future__ import annotations

from typing import Any

from self_rewarding_lm_pytorch.config_values import ConfigError, import_object

__all__ = ["build_model", "build_reward_config", "build_tokenizer"]


def build_tokenizer(spec: str):
    """`"byte"` -> ByteTokenizer; `"package.module:name"` -> that Tokenizer, or what calling it returns."""
    from self_rewarding_lm_pytorch.core.tokenizer import ByteTokenizer, as_tokenizer

    if spec == "byte":
        return ByteTokenizer()
    obj = import_object(spec, where="tokenizer")
    tokenizer = obj() if isinstance(obj, type) or not hasattr(obj, "encode") else obj
    try:
        return as_tokenizer(tokenizer)
    except TypeError as err:
        raise ConfigError(f"tokenizer {spec!r}: {err}") from None


def build_model(model_kwargs: dict, tokenizer, *, where: str = ""):
    """A `TransformerWrapper(attn_layers=Decoder(...))`; x-transformers' own errors become ConfigError
    (their message starts with `where`, e.g. the file's path, when given)."""
    try:
        return _build_model(model_kwargs, tokenizer)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}" if where else str(err)) from None


def _build_model(model_kwargs: dict, tokenizer):
    from x_transformers import Decoder, TransformerWrapper

    kwargs = dict(model_kwargs)
    decoder_kwargs = dict(kwargs.pop("attn_layers", {}))
    if "num_tokens" not in kwargs:
        if getattr(tokenizer, "vocab_size", None) is None:
            raise ConfigError("[model]: num_tokens is required when the tokenizer has no vocab_size")
        kwargs["num_tokens"] = tokenizer.vocab_size
    for key in ("max_seq_len",):
        if key not in kwargs:
            raise ConfigError(f"[model]: missing {key}")
    if "dim" not in decoder_kwargs:
        raise ConfigError("[model.attn_layers]: missing dim")
    try:
        return TransformerWrapper(**kwargs, attn_layers=Decoder(**decoder_kwargs))
    except (TypeError, AssertionError, ValueError, RuntimeError) as err:  # RuntimeError: e.g. a negative dim
        raise ConfigError(f"[model]: x-transformers rejected the model kwargs: {err}") from None


def build_reward_config(judge: dict | None, *, where: str = "") -> Any:
    """The self-judge `RewardConfig` from the [judge] table, or None for the library default."""
    if judge is None:
        return None
    from self_rewarding_lm_pytorch.self_reward.reward_config import RewardConfig

    judge = {k: tuple(v) if isinstance(v, list) else v for k, v in judge.items()}  # score_range
    try:
        return RewardConfig(**judge)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}{': ' if where else ''}[judge]: {err}") from None
