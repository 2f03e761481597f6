"""Pair-selection policies: which of a prompt's N scored candidates become (chosen, rejected).

Shapes: p prompts, k candidates per prompt.

A policy is any callable `policy(scores, lengths) -> list[Pair]` where `scores` is a (p, k) float
tensor with NaN for candidates whose judgment failed, and `lengths` a (p, k) tensor of response
lengths in tokens (or None when the policy does not need it). Policies are pure: same scores,
same pairs. Parameters are bound with `functools.partial` or `make_pair_policy`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import torch
from beartype import beartype
from torch import Tensor

__all__ = ["PAIR_POLICIES", "Pair", "PairPolicy", "best_vs_worst", "length_controlled", "make_pair_policy"]


class Pair(NamedTuple):
    prompt_idx: int
    chosen_idx: int
    rejected_idx: int


PairPolicy = Callable[[Tensor, Tensor | None], list[Pair]]


def _check_scores(scores: Tensor, lengths: Tensor | None, min_margin: float):
    if scores.ndim != 2:
        raise ValueError(f"scores must be (prompts, candidates), got shape {tuple(scores.shape)}")
    if not scores.is_floating_point():
        raise TypeError(f"scores must be a float tensor (NaN marks a failed judgment), got {scores.dtype}")
    if lengths is not None and lengths.shape != scores.shape:
        raise ValueError(f"lengths {tuple(lengths.shape)} must have the shape of scores {tuple(scores.shape)}")
    if min_margin < 0:
        raise ValueError(f"min_margin must be >= 0, got {min_margin}")


def _first_index(row: Tensor, candidates: Tensor, value) -> int:
    """Lowest index i with candidates[i] and row[i] == value (ties break to the first candidate)."""
    return int(torch.nonzero(candidates & (row == value))[0, 0])


@beartype
def best_vs_worst(scores: Tensor, lengths: Tensor | None = None, *, min_margin: float | int = 0.0) -> list[Pair]:
    """Self-rewarding's rule (Yuan et al. 2024, arXiv 2401.10020): chosen = highest score, rejected = lowest.

    A prompt is dropped when fewer than 2 of its scores are valid, when best and worst tie, or when
    their margin is below `min_margin`. Equal scores break to the lowest candidate index.
    `lengths` is accepted (and ignored) so every policy has the same signature.
    """
    _check_scores(scores, lengths, min_margin)
    pairs = []
    for p, row in enumerate(scores.detach().double().cpu()):
        valid = ~torch.isnan(row)
        if int(valid.sum()) < 2:
            continue
        hi, lo = row[valid].max(), row[valid].min()
        margin = float(hi - lo)
        if margin <= 0 or margin < min_margin:
            continue
        pairs.append(Pair(p, _first_index(row, valid, hi), _first_index(row, valid, lo)))
    return pairs


@beartype
def length_controlled(
    scores: Tensor, lengths: Tensor | None, *, rho: float | int = 0.0, min_margin: float | int = 0.0
) -> list[Pair]:
    """Meta-Rewarding's length control (Wu et al. 2024, arXiv 2407.19594): with tier width
    w = rho * (max - min), chosen = the shortest candidate scoring >= max - w, rejected = the longest
    scoring <= min + w (equal lengths break to the lowest index).

    rho = 0 picks the plain rule's scores (the top and bottom score), breaking ties by length. Pairs
    whose chosen score is not above the rejected one (tiers may overlap when rho >= 0.5), or whose
    margin is below `min_margin`, are dropped, as are prompts with fewer than 2 valid scores.
    """
    if lengths is None:
        raise ValueError("length_controlled needs the candidates' lengths")
    _check_scores(scores, lengths, min_margin)
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"rho must be in [0, 1], got {rho}")
    pairs = []
    for p, (row, lens) in enumerate(zip(scores.detach().double().cpu(), lengths.detach().cpu(), strict=True)):
        valid = ~torch.isnan(row)
        if int(valid.sum()) < 2:
            continue
        hi, lo = row[valid].max(), row[valid].min()
        width = rho * (hi - lo)
        top, bottom = valid & (row >= hi - width), valid & (row <= lo + width)
        chosen = _first_index(lens, top, lens[top].min())
        rejected = _first_index(lens, bottom, lens[bottom].max())
        margin = float(row[chosen] - row[rejected])
        if chosen == rejected or margin <= 0 or margin < min_margin:
            continue
        pairs.append(Pair(p, chosen, rejected))
    return pairs


PAIR_POLICIES: dict[str, Callable[..., list[Pair]]] = {
    "best_vs_worst": best_vs_worst,
    "length_controlled": length_controlled,
}


@beartype
def make_pair_policy(policy: str | Callable = "best_vs_worst", **kwargs) -> PairPolicy:
    """A policy from a registered name (or a callable) with its keyword arguments bound, e.g.
    `make_pair_policy("length_controlled", rho=0.2)`. Unknown names and arguments fail here, not later."""
    if isinstance(policy, str):
        if policy not in PAIR_POLICIES:
            raise ValueError(f"unknown pair policy {policy!r}; known: {sorted(PAIR_POLICIES)}")
        policy = PAIR_POLICIES[policy]
    if kwargs:
        import inspect

        params = inspect.signature(policy).parameters
        unknown = sorted(set(kwargs) - set(params))
        if unknown and not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            raise TypeError(f"pair policy {getattr(policy, '__name__', policy)!r} has no argument(s) {unknown}")
        policy = functools.partial(policy, **kwargs)
    return policy
