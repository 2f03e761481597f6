"""The PPO policy with a value head, and the pure bookkeeping that turns rollouts into PPO tensors.

Shapes: b batch (rollouts), n sequence (query + response, right padded), v vocab, d model dim.
"Action" tensors are (b, n-1): column t is the token `input_ids[:, t+1]`, predicted from position t
(the one shift convention of `logprobs.token_logprobs`); the value at column t is V(state before
that token).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from beartype import beartype
from einops import rearrange
from torch import Tensor, nn
from x_transformers import TransformerWrapper

from self_rewarding_lm_pytorch.core.tokenizer import to_id_list

__all__ = [
    "POLICY_FILE",
    "VALUE_HEAD_FILE",
    "RunningMoments",
    "ValueHeadModel",
    "assemble_rollouts",
    "per_token_rewards",
    "token_entropy",
]

POLICY_FILE = "model.safetensors"
VALUE_HEAD_FILE = "value_head.safetensors"


class ValueHeadModel(nn.Module):
    """A `TransformerWrapper` policy plus a scalar value head on its final (normed) hidden states.

    `forward(ids)` returns (logits (b, n, v), values (b, n)) from one pass of the shared trunk.
    The wrapped transformer is the same object you passed in (trained in place), so after PPO the
    plain `TransformerWrapper` is the fine-tuned policy; `save(folder)` writes it as
    `model.safetensors` (loadable with `checkpoint.load_model` into a plain `TransformerWrapper`)
    and the head separately as `value_head.safetensors`.
    """

    @beartype
    def __init__(self, transformer: nn.Module):
        super().__init__()
        from self_rewarding_lm_pytorch.models import as_model

        # A Hugging Face model is wrapped (HFCausalLM), which returns logits and final hidden states
        # for the same `return_logits_and_embeddings=True` as x-transformers.
        transformer = as_model(transformer)
        if not isinstance(transformer, TransformerWrapper) and not hasattr(transformer, "hidden_size"):
            raise TypeError(f"ValueHeadModel needs a TransformerWrapper or an HF causal LM, got {type(transformer)}")
        self.transformer = transformer
        dim = transformer.attn_layers.dim if isinstance(transformer, TransformerWrapper) else transformer.hidden_size
        self.value_head = nn.Linear(dim, 1)
        # zero init: every value starts at 0, so the first advantages are the rewards themselves
        # rather than rewards minus random noise from an untrained head
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids: Tensor) -> tuple[Tensor, Tensor]:
        logits, embeds = self.transformer(input_ids, return_logits_and_embeddings=True)
        values = rearrange(self.value_head(embeds), "b n 1 -> b n")
        return logits, values

    @beartype
    def save(self, folder: str | os.PathLike) -> Path:
        """Write `folder/model.safetensors` (the plain policy) and `folder/value_head.safetensors`."""
        from self_rewarding_lm_pytorch.training.checkpoint import save_model

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_model(self.transformer, folder / POLICY_FILE)
        save_model(self.value_head, folder / VALUE_HEAD_FILE)
        return folder

    @beartype
    def load(self, folder: str | os.PathLike, *, value_head: bool = True) -> ValueHeadModel:
        """Load weights saved by `save`; `value_head=False` loads only the policy (fresh head kept)."""
        from self_rewarding_lm_pytorch.training.checkpoint import load_model

        folder = Path(folder)
        load_model(self.transformer, folder / POLICY_FILE)
        if value_head:
            load_model(self.value_head, folder / VALUE_HEAD_FILE)
        return self


def _trim_response(response: list[int], eos_id: int | None) -> list[int]:
    """A response up to and including its first EOS: what follows is a batched sampler's padding."""
    if eos_id is not None and eos_id in response:
        return response[: response.index(eos_id) + 1]
    return response


@beartype
def assemble_rollouts(
    queries: Sequence[Tensor | Sequence[int]],
    responses: Sequence[Tensor | Sequence[int]],
    *,
    pad_id: int,
    eos_id: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Right-padded (input_ids (b, n) long, action_mask (b, n-1) bool) for query+response pairs.

    `action_mask[:, t]` is True iff `input_ids[:, t+1]` is a response token, i.e. a token the policy
    chose. Every response token counts, up to and including the first EOS (when `eos_id` is given):
    tokens after it are ignored, so the padded rows of `sampling.sample` (padded only after an EOS)
    can be passed as they are. Pad ids are never stripped otherwise, since a small vocabulary may
    use the pad id as a real token. A query needs >= 1 token (the first token has no prediction)
    and a response >= 1 token (the score is placed on its last token).
    """
    if len(queries) != len(responses):
        raise ValueError(f"got {len(queries)} queries but {len(responses)} responses")
    if len(queries) == 0:
        raise ValueError("need at least one (query, response) pair")
    rows, starts = [], []
    for i, (q, r) in enumerate(zip(queries, responses, strict=True)):
        q_ids, r_ids = to_id_list(q), _trim_response(to_id_list(r), eos_id)
        if not q_ids:
            raise ValueError(f"query {i} is empty: the first response token would have no prediction")
        if not r_ids:
            raise ValueError(f"response {i} is empty: nothing to score")
        rows.append(q_ids + r_ids)
        starts.append(len(q_ids))
    n = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), n), pad_id, dtype=torch.long)
    lengths = torch.tensor([len(r) for r in rows])
    for i, r in enumerate(rows):
        input_ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    # token j (j >= 1) sits in action column j-1
    token_pos = torch.arange(1, n)
    action_mask = (token_pos[None, :] >= torch.tensor(starts)[:, None]) & (token_pos[None, :] < lengths[:, None])
    return input_ids, action_mask


@beartype
def per_token_rewards(kl: Tensor, scores: Tensor, action_mask: Tensor, kl_coef: float) -> tuple[Tensor, Tensor]:
    """(rewards, non_score_rewards), both (b, n-1): -kl_coef * kl on every action token, plus each
    row's score on its last action token (Ziegler et al. 2019, Eq. 2 spread over tokens).

    Masked-out columns are exactly 0. Every row needs at least one action token.
    """
    if kl.shape != action_mask.shape or scores.shape != kl.shape[:1]:
        raise ValueError(
            f"kl {tuple(kl.shape)}, action_mask {tuple(action_mask.shape)}, scores {tuple(scores.shape)} "
            "do not fit (b, n-1), (b,)"
        )
    has_action = action_mask.any(dim=-1)
    if not bool(has_action.all()):
        raise ValueError(f"rows {torch.nonzero(~has_action).flatten().tolist()} have no action token to score")
    non_score = torch.where(action_mask, -kl_coef * kl, torch.zeros_like(kl))
    # last True column per row: position of the max of (mask * column index)
    cols = torch.arange(kl.shape[1], device=kl.device)
    last = (action_mask.long() * cols).argmax(dim=-1)
    rewards = non_score.clone()
    rewards[torch.arange(kl.shape[0], device=kl.device), last] += scores.to(kl.dtype)
    return rewards, non_score


@beartype
def token_entropy(logits: Tensor) -> Tensor:
    """(...,) entropy in nats of the softmax over the last dim: logsumexp(l) - sum(softmax(l) * l)."""
    logits = logits.float()
    return torch.logsumexp(logits, dim=-1) - (logits.softmax(dim=-1) * logits).sum(dim=-1)


class RunningMoments:
    """Running mean and (population) std of every value seen, merged batch by batch (Chan et al. 1979),
    for normalising scores across PPO steps."""

    def __init__(self):
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.count) if self.count > 0 else 1.0

    def update(self, values: Tensor) -> None:
        values = values.detach().double().flatten()
        k = values.numel()
        if k == 0:
            return
        batch_mean = float(values.mean())
        batch_m2 = float(((values - batch_mean) ** 2).sum())
        total = self.count + k
        delta = batch_mean - self.mean
        self.mean += delta * k / total
        self.m2 += batch_m2 + delta**2 * self.count * k / total
        self.count = total

    def state_dict(self) -> dict:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict) -> None:
        self.count, self.mean, self.m2 = int(state["count"]), float(state["mean"]), float(state["m2"])
