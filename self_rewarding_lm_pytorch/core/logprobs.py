"""Log-probabilities of token sequences: THE one place that shifts logits against targets.

Shapes: b batch, n sequence, v vocab.

Convention: `logits[:, t]` is the model's prediction for token `t + 1`, so token `t` is scored by
`logits[:, t - 1]`. Callers pass a mask `is_response` (b, n) that is True for the tokens whose
log-probability they want, in the same positions as `input_ids`; the shift happens only here.
Token 0 has no logit predicting it and can never be counted.
"""

from __future__ import annotations

import torch
from beartype import beartype
from torch import Tensor
from torch.utils.checkpoint import checkpoint

__all__ = ["model_sequence_logprobs", "response_token_counts", "sequence_logprobs", "token_logprobs"]

_REDUCTIONS = ("sum", "mean")

# Rows of the vocabulary processed at once when the logits are not fp32: bounds the temporary fp32
# copy that logsumexp needs to this many rows instead of the whole (b, n, v) tensor.
_FP32_CHUNK_ROWS = 4096


def _check_shapes(logits: Tensor, input_ids: Tensor):
    if logits.ndim != 3:
        raise ValueError(f"logits must be (b, n, v), got shape {tuple(logits.shape)}")
    if input_ids.shape != logits.shape[:2]:
        raise ValueError(f"input_ids {tuple(input_ids.shape)} does not match logits {tuple(logits.shape)} in (b, n)")
    if input_ids.dtype not in (torch.long, torch.int32, torch.int64):
        raise TypeError(f"input_ids must be an integer tensor, got {input_ids.dtype}")


def _chunk_logsumexp(chunk: Tensor) -> Tensor:
    return torch.logsumexp(chunk.float(), dim=-1)


def _logsumexp_fp32(logits: Tensor) -> Tensor:
    """logsumexp over the last dim, in fp32, without materialising a full fp32 copy of low-precision logits.

    Each chunk's fp32 copy is temporary; under autograd the chunk is checkpointed, so backward
    recomputes it instead of every chunk's fp32 copy staying alive until then.
    """
    if logits.dtype in (torch.float32, torch.float64):
        return torch.logsumexp(logits, dim=-1)
    flat = logits.reshape(-1, logits.shape[-1])
    grad = torch.is_grad_enabled() and flat.requires_grad
    parts = [
        checkpoint(_chunk_logsumexp, chunk, use_reentrant=False) if grad else _chunk_logsumexp(chunk)
        for chunk in flat.split(_FP32_CHUNK_ROWS, dim=0)
    ]
    return torch.cat(parts).reshape(logits.shape[:-1])


@beartype
def token_logprobs(logits: Tensor, input_ids: Tensor) -> Tensor:
    """(b, n-1) fp32 log p(input_ids[:, t+1] | input_ids[:, :t+1]) from logits[:, t].

    Gathers the target logit and subtracts the logsumexp, so no (b, n, v) log-softmax is ever kept.
    """
    _check_shapes(logits, input_ids)
    pred = logits[:, :-1]
    targets = input_ids[:, 1:].long()
    target_logits = pred.gather(-1, targets.unsqueeze(-1)).squeeze(-1).float()
    return target_logits - _logsumexp_fp32(pred).float()


@beartype
def sequence_logprobs(logits: Tensor, input_ids: Tensor, is_response: Tensor, reduction: str = "sum") -> Tensor:
    """(b,) log-probability of the tokens marked True in `is_response`, summed (DPO paper) or averaged.

    A row with no marked tokens gets 0 for either reduction (its mean divides by max(count, 1)).
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if is_response.shape != input_ids.shape:
        raise ValueError(
            f"is_response {tuple(is_response.shape)} must have the shape of input_ids {tuple(input_ids.shape)}"
        )
    if is_response.dtype != torch.bool:
        raise TypeError(f"is_response must be a bool tensor, got {is_response.dtype}")
    if input_ids.shape[1] > 0 and bool(is_response[:, 0].any()):
        raise ValueError(
            "is_response[:, 0] is True: the first token has no logit predicting it (a prompt needs >= 1 token)"
        )
    per_token = token_logprobs(logits, input_ids)
    mask = is_response[:, 1:]
    # where (not multiply) so a -inf log-prob at a masked position cannot turn into NaN
    total = torch.where(mask, per_token, torch.zeros_like(per_token)).sum(dim=-1)
    if reduction == "sum":
        return total
    return total / mask.sum(dim=-1).clamp(min=1).to(total.dtype)


@beartype
def response_token_counts(is_response: Tensor) -> Tensor:
    """(b,) how many tokens `sequence_logprobs` sums over per row: the marked tokens after token 0.

    Read from the mask, so a loss on per-token means gets its lengths from the same forward as its sums.
    """
    return is_response[:, 1:].sum(dim=-1)


@beartype
def model_sequence_logprobs(model, input_ids: Tensor, is_response: Tensor, reduction: str = "sum") -> Tensor:
    """(b,) `sequence_logprobs` of `model(input_ids)`; right-padded batches need no attention mask."""
    return sequence_logprobs(model(input_ids), input_ids, is_response, reduction=reduction)
