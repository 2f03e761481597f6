"""Batched, KV-cached sampling from an x-transformers `TransformerWrapper`, a Hugging Face causal LM
(KV cache: `hf_decode.HFCacheStepper`), or any causal LM.

    out = sample(model, prompts, max_new_tokens=64, num_samples=4, temperature=0.7, top_p=0.9,
                 eos_id=tokenizer.eos_id, generator=torch.Generator().manual_seed(0))

Shape legend: b rows (prompts x samples, prompt-major), m generated positions, v vocab.

This file holds `sample` and what it orchestrates: argument checks, the choice of decoding backend
(`kv_decode`, `hf_decode`), and rows grouped into chunks, each decoded by the step loop in
`decode_loop`. How a token is drawn from logits, and the per-row random numbers that make a row's
draws independent of its batch, live in `token_draws` (`filter_logits` and `sample_from_logits` are
re-exported here).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from beartype import beartype
from torch import Tensor, nn
from tqdm import tqdm
from x_transformers import TransformerWrapper

from self_rewarding_lm_pytorch.core.decode_loop import DecodeSettings, decode_chunk
from self_rewarding_lm_pytorch.core.hf_decode import HFCacheStepper, hf_model_inside
from self_rewarding_lm_pytorch.core.kv_decode import (
    FastDecoder,
    FullStepper,
    UnsupportedModelError,
    XCacheStepper,
    fast_decode_support,
    restore_training_modes,
    training_modes,
    xcache_support,
)
from self_rewarding_lm_pytorch.core.modules import unwrap_network
from self_rewarding_lm_pytorch.core.sampling_config import SamplingConfig, resolve_sampling
from self_rewarding_lm_pytorch.core.token_draws import (
    draw_base_key,
    filter_logits,
    row_keys,
    sample_from_logits,
)
from self_rewarding_lm_pytorch.core.token_draws import (
    splitmix64 as splitmix64,  # re-exported: tests import it from here
)

__all__ = [
    "BACKENDS",
    "SampleOutput",
    "UnsupportedModelError",
    "fast_decode_support",
    "filter_logits",
    "sample",
    "sample_from_logits",
    "xcache_support",
]

BACKENDS = ("auto", "fast", "xtransformers", "hf", "full")


@dataclass
class SampleOutput:
    """Generated tokens only (never the prompt); rows prompt-major: row i * num_samples + j."""

    response_ids: Tensor  # (b, m) long, pad_id after a row's end
    response_mask: Tensor  # (b, m) bool, True for generated tokens including the EOS token itself
    logprobs: Tensor | None  # (b, m) float: log p(token), raw model (temperature 1, unfiltered); 0 where masked
    prompt_index: Tensor  # (b,) long
    eos_id: int | None = None
    backend: str = "auto"  # the backend that actually ran: "fast", "xtransformers", "hf" or "full"

    @property
    def lengths(self) -> Tensor:
        return self.response_mask.sum(dim=-1)

    def texts(self, tokenizer) -> list[str]:
        """Decoded responses without the terminating EOS and without padding."""
        texts = []
        for ids, mask in zip(self.response_ids, self.response_mask, strict=True):
            ids = ids[mask].tolist()
            if self.eos_id is not None and ids and ids[-1] == self.eos_id:
                ids = ids[:-1]
            texts.append(tokenizer.decode(ids))
        return texts


def _plan_chunks(lengths: list[int], num_samples: int, batch_size: int | None, by_length: bool):
    """Global row ids per chunk: prompts sorted by length (less padding), at most batch_size rows."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    cap = batch_size or len(lengths) * num_samples
    chunks: list[list[int]] = []
    current: list[int] = []
    for row in (i * num_samples + j for i in order for j in range(num_samples)):
        if current and (
            len(current) == cap or (by_length and lengths[row // num_samples] != lengths[current[-1] // num_samples])
        ):
            chunks.append(current)
            current = []
        current.append(row)
    return [*chunks, current]


def _resolve_backend(net, backend: str, use_cache: bool, is_hf: bool) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if not use_cache:
        if backend in ("fast", "xtransformers", "hf"):
            raise ValueError(f"use_cache=False contradicts backend={backend!r}")
        return "full"
    if is_hf:
        if backend not in ("auto", "hf", "full"):
            raise UnsupportedModelError(f"backend={backend!r} runs x-transformers models, not Hugging Face ones")
        return "full" if backend == "full" else "hf"
    if backend == "hf":
        raise UnsupportedModelError("backend='hf' runs Hugging Face models only")
    if backend in ("fast", "auto"):
        problem = fast_decode_support(net)
        if problem is None:
            return "fast"
        if backend == "fast":
            raise UnsupportedModelError(f"the fast decoder cannot run this model: {problem}")
    problem = xcache_support(net)
    if problem is None:
        return "xtransformers"
    if backend == "xtransformers":
        raise UnsupportedModelError(f"x-transformers' cache cannot run this model: {problem}")
    return "full"


def _as_ids(prompt: Tensor, i: int) -> Tensor:
    # Whole-number floats are accepted: the seed README's encoder returns a float tensor.
    if prompt.ndim != 1 or len(prompt) == 0 or prompt.dtype == torch.bool or prompt.is_complex():
        raise ValueError(f"prompt {i} must be a non-empty 1-D integer tensor, got {prompt.dtype} {tuple(prompt.shape)}")
    if prompt.is_floating_point() and not torch.equal(prompt, prompt.round()):
        raise ValueError(f"prompt {i} holds non-integral token ids")
    return prompt.long()


def _check_prompts(net, prompts: list[Tensor], max_new_tokens: int, is_hf: bool) -> list[int]:
    lengths = [len(p) for p in prompts]
    if is_hf:
        vocab, limit = net.get_output_embeddings().weight.shape[0], getattr(net.config, "max_position_embeddings", None)
        low, high = min(int(p.min()) for p in prompts), max(int(p.max()) for p in prompts)
        if low < 0 or high >= vocab:
            raise ValueError(f"prompt ids must lie in [0, {vocab}), got ids from {low} to {high}")
        need = max(lengths) + max_new_tokens
        if isinstance(limit, int) and need > limit:
            raise ValueError(
                f"longest prompt ({max(lengths)}) + max_new_tokens ({max_new_tokens}) = {need} exceeds the model's "
                f"max_position_embeddings {limit}"
            )
    elif isinstance(net, TransformerWrapper):
        low, high = min(int(p.min()) for p in prompts), max(int(p.max()) for p in prompts)
        if low < 0 or high >= net.num_tokens:
            raise ValueError(f"prompt ids must lie in [0, {net.num_tokens}), got ids from {low} to {high}")
        need = max(lengths) + max_new_tokens
        if not net.can_cache_kv_outside_max_seq_len and need > net.max_seq_len:
            raise ValueError(
                f"longest prompt ({max(lengths)}) + max_new_tokens ({max_new_tokens}) = {need} exceeds the model's "
                f"max_seq_len {net.max_seq_len}; it has absolute positions, so it cannot run past it"
            )
    return lengths


def _check_counts(num_samples: int, batch_size: int | None) -> None:
    # the sampling settings themselves are checked by SamplingConfig's validator
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")


# `sample`'s own keyword defaults: a keyword left at its default defers to `sampling=`
_LOOSE_DEFAULTS = dict(max_new_tokens=None, temperature=1.0, top_k=None, top_p=None, min_p=None)


class _HFLogits:
    """`ids -> logits` of a bare HF model, for the uncached `FullStepper`."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __call__(self, ids: Tensor) -> Tensor:
        return self.model(input_ids=ids, use_cache=False).logits


_STEPPERS = {"fast": FastDecoder, "xtransformers": XCacheStepper, "hf": HFCacheStepper, "full": FullStepper}


def _row_positions(prompt_positions: Sequence[int] | None, num_prompts: int, num_samples: int) -> Tensor:
    """Each row's position in the whole call, prompt-major: `position * num_samples + sample`."""
    if prompt_positions is None:
        return torch.arange(num_prompts * num_samples)
    positions = list(prompt_positions)
    if len(positions) != num_prompts:
        raise ValueError(f"prompt_positions has {len(positions)} entries for {num_prompts} prompts")
    if min(positions, default=0) < 0 or len(set(positions)) != len(positions):
        raise ValueError("prompt_positions must be distinct and >= 0 (each prompt its own draws)")
    base = torch.tensor(positions, dtype=torch.long) * num_samples
    return (base[:, None] + torch.arange(num_samples)).flatten()


def _resolve_settings(
    sampling: SamplingConfig | None, loose: dict[str, Any], eos_id: int | None, pad_id: int, return_logprobs: bool
) -> DecodeSettings:
    config = resolve_sampling(
        sampling, {k: (k, v) for k, v in loose.items()}, _LOOSE_DEFAULTS, where="sample"
    )  # the one validator
    if config.max_new_tokens is None:
        raise ValueError("sample needs max_new_tokens (as a keyword or in sampling=)")
    return DecodeSettings(
        config.max_new_tokens,
        config.temperature,
        config.top_k,
        config.top_p,
        config.min_p,
        eos_id,
        pad_id,
        return_logprobs,
    )


def _global_row_keys(
    generator: torch.Generator | None,
    first_row: int,
    prompt_positions: Sequence[int] | None,
    num_prompts: int,
    num_samples: int,
) -> Tensor:
    """(b,) each row's random key: the call's one base key hashed with the row's index in the whole call."""
    base = draw_base_key(generator)
    global_rows = first_row + _row_positions(prompt_positions, num_prompts, num_samples)
    return row_keys(base, global_rows)


def _decode_chunks(
    stepper_class,
    runner,
    prompts: list[Tensor],
    chunks,
    keys: Tensor,
    s: DecodeSettings,
    num_samples: int,
    progress: bool,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Each chunk of rows through its own stepper -> ids, mask, logprobs (b, width), width the longest row."""
    num_rows = len(prompts) * num_samples
    ids = torch.full((num_rows, s.max_new_tokens), s.pad_id, dtype=torch.long)
    mask = torch.zeros(num_rows, s.max_new_tokens, dtype=torch.bool)
    logprobs = torch.zeros(num_rows, s.max_new_tokens) if s.return_logprobs else None
    width = 0
    for rows in tqdm(chunks, desc="sample", disable=not progress or len(chunks) == 1):
        prompt_ids = [row // num_samples for row in rows]
        unique = [p for p, _ in itertools.groupby(prompt_ids)]
        counts = [len(list(group)) for _, group in itertools.groupby(prompt_ids)]
        with torch.inference_mode():
            stepper = stepper_class(runner, [prompts[p] for p in unique], counts, s.max_new_tokens)
            c_ids, c_mask, c_lp = decode_chunk(stepper, keys[rows], s)
        steps, index = c_ids.shape[1], torch.tensor(rows)
        ids[index, :steps], mask[index, :steps] = c_ids, c_mask
        if logprobs is not None:
            logprobs[index, :steps] = c_lp
        width = max(width, steps)
    return (
        ids[:, :width].clone(),
        mask[:, :width].clone(),
        None if logprobs is None else logprobs[:, :width].clone(),
    )


@beartype
def sample(
    model: nn.Module,
    prompts: list[Tensor],
    *,
    max_new_tokens: int | None = None,
    num_samples: int = 1,
    temperature: float | int = 1.0,
    top_k: int | None = None,
    top_p: float | int | None = None,
    min_p: float | int | None = None,
    sampling: SamplingConfig | None = None,
    eos_id: int | None = None,
    pad_id: int = 0,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    batch_size: int | None = None,
    return_logprobs: bool = False,
    backend: str = "auto",
    progress: bool = False,
    first_row: int = 0,
    prompt_positions: Sequence[int] | None = None,
) -> SampleOutput:
    """Sample `num_samples` continuations of each prompt; see the module docstrings (randomness: `token_draws`).

    The sampling settings come as one `SamplingConfig` (`sampling=`) or as the loose keywords
    `max_new_tokens`, `temperature`, `top_k`, `top_p`, `min_p` (a loose keyword that disagrees with
    `sampling` is a `SamplingConflictError`); `max_new_tokens` must be set by one of them.
    temperature 0 is greedy. `batch_size` caps rows per forward (None: all rows at once). `backend`
    "auto" takes the fast KV decoder when the model passes `fast_decode_support`, else x-transformers'
    own cache, else ("full", also `use_cache=False`) a full forward per step; a Hugging Face model
    (bare, in `HFCausalLM`, or a `peft.PeftModel`) decodes with its own KV cache ("hf"). Returned
    tensors are on CPU. `first_row`: the global index of this call's first row, when the call is one
    process's share of a larger call split across processes (with the same generator seed); its rows
    then draw exactly what they would draw in the whole call. `prompt_positions`: where each prompt
    stands in that larger call (default: one after another), for a caller that drops some prompts and
    wants the others to keep their draws: sample `j` of the prompt at position `q` is global row
    `first_row + q * num_samples + j`.
    """
    loose = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    settings = _resolve_settings(sampling, loose, eos_id, pad_id, return_logprobs)
    max_new_tokens = settings.max_new_tokens
    _check_counts(num_samples, batch_size)
    if first_row < 0:
        raise ValueError(f"first_row must be >= 0, got {first_row}")
    net = unwrap_network(model)
    hf = hf_model_inside(net)
    net = hf if hf is not None else net
    device = next(itertools.chain(net.parameters(), net.buffers())).device
    if not prompts:
        raise ValueError("prompts is empty")
    prompts = [_as_ids(p, i).to(device) for i, p in enumerate(prompts)]
    lengths = _check_prompts(net, prompts, max_new_tokens, is_hf=hf is not None)
    chosen = _resolve_backend(net, backend, use_cache, is_hf=hf is not None)
    runner: Any = _HFLogits(net) if hf is not None and chosen == "full" else net
    keys = _global_row_keys(generator, first_row, prompt_positions, len(prompts), num_samples).to(device)
    chunks = _plan_chunks(lengths, num_samples, batch_size, by_length=chosen != "fast")
    modes = training_modes(net)
    net.eval()
    try:
        ids, mask, logprobs = _decode_chunks(
            _STEPPERS[chosen], runner, prompts, chunks, keys, settings, num_samples, progress
        )
    finally:
        restore_training_modes(modes)
    return SampleOutput(
        response_ids=ids,
        response_mask=mask,
        logprobs=logprobs,
        prompt_index=torch.arange(len(prompts)).repeat_interleave(num_samples),
        eos_id=eos_id,
        backend=chosen,
    )
