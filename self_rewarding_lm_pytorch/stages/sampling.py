"""How a stage config's sampling settings resolve: its seed-compatible loose fields (`gen_temperature`,
`eval_top_p`, ...) or one `SamplingConfig` (`sampling=`, `judge_sampling=`), never both in disagreement.

The rule (`core.sampling_config.resolve_sampling`): without `sampling=`, the loose fields are the
settings; with it, `sampling=` is the whole setting and a loose field must stay at its default or
agree with it, else `SamplingConflictError`. Config files may give `sampling` as a table.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from self_rewarding_lm_pytorch.core.sampling_config import SamplingConfig, resolve_sampling

__all__ = ["as_sampling_config", "stage_sampling"]


def as_sampling_config(value: Any, *, where: str) -> SamplingConfig | None:
    """None, a SamplingConfig, or a dict of its fields (from a config file) -> SamplingConfig or None."""
    if value is None or isinstance(value, SamplingConfig):
        return value
    if isinstance(value, dict):
        unknown = sorted(set(value) - {f.name for f in dataclasses.fields(SamplingConfig)})
        if unknown:
            raise TypeError(f"{where}: unknown SamplingConfig field(s) {unknown}")
        return SamplingConfig(**value)
    raise TypeError(f"{where} must be a SamplingConfig, a dict of its fields or None, got {type(value).__name__}")


def stage_sampling(config: Any, field_name: str, loose: dict[str, str]) -> SamplingConfig:
    """The SamplingConfig of `config`: its `field_name` field or its loose fields `loose` (name -> key)."""
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    given = as_sampling_config(getattr(config, field_name), where=f"{type(config).__name__}.{field_name}")
    return resolve_sampling(
        given,
        {name: (key, getattr(config, name)) for name, key in loose.items()},
        {name: defaults[name] for name in loose},
        where=type(config).__name__,
    )
