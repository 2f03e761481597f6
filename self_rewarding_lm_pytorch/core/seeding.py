"""Seed derivation: THE one way a component gets its own seed from a run's seed.

    derive_seed(run_seed, "stage", 2)              # the third stage of a pipeline
    derive_seed(seed, "preference-chunk", p, c)    # pass p, chunk c of preference generation

A seed is a pure function of the base seed and a path of keys (ints or strings), so a resumed run
redraws exactly what an uninterrupted one drew, whatever ran before. It hashes the path rather than
adding offsets (`seed * 1_000_003 + i` collides across seeds and streams); the string names the
stream, so two components that both number their chunks from 0 never share random numbers.
"""

from __future__ import annotations

import hashlib

__all__ = ["derive_seed"]

_MAX = 2**63  # torch.manual_seed and TrainConfig take non-negative 63-bit seeds


def derive_seed(seed: int, *path: int | str) -> int:
    """A seed in [0, 2**63) determined by `seed` and `path`; distinct paths give independent seeds."""
    for key in (seed, *path):
        if isinstance(key, bool) or not isinstance(key, (int, str)):
            raise TypeError(f"derive_seed takes ints and strings, got {type(key).__name__} {key!r}")
    # repr tells 1 from "1"; the separator cannot occur inside a repr of an int or a str
    text = "\x1f".join(repr(key) for key in (seed, *path))
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") % _MAX
