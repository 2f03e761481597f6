"""The step loop `sampling.sample` runs on each chunk of rows: prefill, pick a token per row, step.

It drives any backend with the stepper interface of `kv_decode` (prefill, step, select) and
writes each row's tokens, mask and log-probs on CPU. Rows that have finished are dropped from the
backend's batch once half of them are done (compaction); a row's draws do not change when that
happens, because its random numbers depend only on its key and the step (`token_draws`).

Shape legend: b rows, v vocab.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from self_rewarding_lm_pytorch.core.token_draws import filter_logits, sample_from_logits, step_uniforms

__all__ = ["DecodeSettings", "decode_chunk"]

_COMPACT = True  # drop finished rows from the batch; False only in tests that compare against not dropping


@dataclass(frozen=True)
class DecodeSettings:
    """`sample`'s settings after validation, as the loop reads them."""

    max_new_tokens: int
    temperature: float
    top_k: int | None
    top_p: float | None
    min_p: float | None
    eos_id: int | None
    pad_id: int
    return_logprobs: bool


def _pick(logits: Tensor, keys: Tensor, step: int, s: DecodeSettings) -> Tensor:
    if s.temperature == 0:
        return logits.argmax(dim=-1)
    filtered = filter_logits(logits.float() / s.temperature, top_k=s.top_k, top_p=s.top_p, min_p=s.min_p)
    return sample_from_logits(filtered, step_uniforms(keys, step))


def decode_chunk(stepper, keys: Tensor, s: DecodeSettings):
    """The shared sampling loop: (b,) row keys -> tokens, mask, logprobs (b, steps) on CPU."""
    b, width = len(keys), s.max_new_tokens
    tokens = torch.full((b, width), s.pad_id, dtype=torch.long)
    mask = torch.zeros(b, width, dtype=torch.bool)
    logprobs = torch.zeros(b, width) if s.return_logprobs else None
    rows, done = torch.arange(b), torch.zeros(b, dtype=torch.bool)
    logits, steps = stepper.prefill(), 0
    for t in range(width):
        token = _pick(logits, keys[rows], t, s)
        token_cpu, live = token.cpu(), ~done
        tokens[rows[live], t] = token_cpu[live]
        mask[rows[live], t] = True
        if logprobs is not None:
            chosen = logits.float().log_softmax(dim=-1).gather(-1, token[:, None])[:, 0].cpu()
            logprobs[rows[live], t] = chosen[live]
        steps = t + 1
        if s.eos_id is not None:
            done = done | (token_cpu == s.eos_id)
        if t == width - 1 or bool(done.all()):
            break
        if _COMPACT and 2 * int(done.sum()) >= len(rows) >= 4:
            # Finished rows still cost compute; dropping them copies the cache, so only when half are done.
            keep = ~done
            stepper.select(keep.to(token.device))
            rows, done, token = rows[keep], done[keep], token[keep.to(token.device)]
        logits = stepper.step(token)
    return tokens[:, :steps], mask[:, :steps], None if logprobs is None else logprobs[:, :steps]
