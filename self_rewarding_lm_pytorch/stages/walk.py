"""Config walking: THE one traversal of a stage config's lists, dicts and nested dataclasses.

`describe_config` (the config saved beside checkpoints) and `fingerprint` (the run manifest's stage
hashes) differ only in what they make of a leaf; each passes a `leaf` function that returns its
value for a leaf, or `DESCEND` for a container this walker should go into.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

__all__ = ["DESCEND", "is_container", "walk_config"]

DESCEND = object()


def is_container(value: Any) -> bool:
    """Whether `walk_config` can descend into `value`: a list, tuple, dict or dataclass instance."""
    return isinstance(value, (list, tuple, dict)) or (dataclasses.is_dataclass(value) and not isinstance(value, type))


def walk_config(
    value: Any,
    leaf: Callable[[Any], Any],
    *,
    skip: frozenset = frozenset(),
    drop_field: Callable[[Any, dataclasses.Field], bool] | None = None,
) -> Any:
    """JSON-able data mirroring `value`: lists for lists and tuples, dicts with str keys for dicts and
    dataclasses (minus the top-level fields named in `skip`, and any field of any dataclass for which
    `drop_field(instance, field)` is true), `leaf(x)` for everything else."""
    out = leaf(value)
    if out is not DESCEND:
        return out
    if isinstance(value, (list, tuple)):
        return [walk_config(v, leaf, drop_field=drop_field) for v in value]
    if isinstance(value, dict):
        return {str(k): walk_config(v, leaf, drop_field=drop_field) for k, v in value.items()}
    if is_container(value):
        return {
            f.name: walk_config(getattr(value, f.name), leaf, drop_field=drop_field)
            for f in dataclasses.fields(value)
            if f.name not in skip and not (drop_field is not None and drop_field(value, f))
        }
    raise TypeError(f"leaf() asked to descend into a {type(value).__name__}, which is not a container")
