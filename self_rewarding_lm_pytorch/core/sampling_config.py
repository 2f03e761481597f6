"""The sampling vocabulary: one `SamplingConfig`, one validator, and one rule for configs that also
take the settings as loose fields (the seed package's `gen_temperature`, `eval_top_p`, ...).

    SamplingConfig(temperature=0.7, top_p=0.9, max_new_tokens=64)

`temperature` 0 is greedy. `top_k`, `top_p`, `min_p` filter the distribution (None: off), applied in
that order. `max_new_tokens` None means "the caller's budget" (a stage derives it from the model's
length); `sample` needs it set. `JudgeSettings` is how the self-judge samples: a `SamplingConfig`
plus `num_judgments`, the number of judgments per response that are averaged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from self_rewarding_lm_pytorch.core.field_types import check_field_types, check_value_type, field_hints

__all__ = ["JudgeSettings", "SamplingConfig", "SamplingConflictError", "resolve_sampling", "validate_sampling"]


class SamplingConflictError(ValueError):
    """A config got `sampling=` and a loose sampling field (`gen_temperature=`, ...) that disagree."""


def validate_sampling(
    *,
    temperature: Any,
    top_k: Any = None,
    top_p: Any = None,
    min_p: Any = None,
    max_new_tokens: Any = None,
    where: str = "SamplingConfig",
) -> None:
    """THE check of sampling settings: TypeError for a wrong type, ValueError for a bad value, naming it."""
    given = dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, max_new_tokens=max_new_tokens)
    hints = field_hints(SamplingConfig)
    for name, value in given.items():
        check_value_type(name, value, hints[name], where=where)
    values = {
        "temperature must be a finite number >= 0": math.isfinite(temperature) and temperature >= 0,
        "top_k must be >= 1 or None": top_k is None or top_k >= 1,
        "top_p must be in (0, 1] or None": top_p is None or 0 < top_p <= 1,
        # min_p = 1 would keep only the most likely token(s): greedy in disguise; say temperature=0
        "min_p must be in [0, 1) or None": min_p is None or 0 <= min_p < 1,
        "max_new_tokens must be >= 1 or None": max_new_tokens is None or max_new_tokens >= 1,
    }
    for message, ok in values.items():
        if not ok:
            name = message.split()[0]
            raise ValueError(f"{where}: {message}, got {given[name]!r}")


@dataclass(frozen=True)
class SamplingConfig:
    """How to sample: temperature (0 = greedy), top-k / top-p / min-p filters, and the new-token budget."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    max_new_tokens: int | None = None

    def __post_init__(self):
        validate_sampling(**self.sampling_kwargs(), where=type(self).__name__)
        for name in ("temperature", "top_p", "min_p"):  # ints are accepted for floats, stored as floats
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, float(value))

    def sampling_kwargs(self) -> dict[str, Any]:
        """The five settings as keyword arguments (for `sample` and the seed names' round trip)."""
        return {name: getattr(self, name) for name in SAMPLING_FIELDS}

    def sampling_only(self) -> SamplingConfig:
        """The plain `SamplingConfig` of a subclass (e.g. `GenerationConfig` without its `eos_id`)."""
        return SamplingConfig(**self.sampling_kwargs())


SAMPLING_FIELDS = tuple(f.name for f in fields(SamplingConfig))


@dataclass(frozen=True)
class JudgeSettings:
    """How the self-judge samples: `num_judgments` judgments per response (averaged), each drawn with `sampling`."""

    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(temperature=0.7, top_p=0.9))
    num_judgments: int = 3

    def __post_init__(self):
        check_field_types(self)
        if self.num_judgments < 1:
            raise ValueError(f"num_judgments must be >= 1, got {self.num_judgments!r}")


def resolve_sampling(
    sampling: SamplingConfig | None, loose: dict[str, Any], defaults: dict[str, Any], *, where: str
) -> SamplingConfig:
    """The one rule for configs that take both `sampling=` and loose fields.

    `loose` maps a config's own field name (e.g. "gen_temperature") to (SamplingConfig field, value);
    `defaults` maps the same names to their declared defaults. Without `sampling`, the loose values
    are the settings. With it, `sampling` is the settings, and a loose field still at its default
    defers to it; a loose field set to another value that disagrees is a `SamplingConflictError`.
    """
    if sampling is None:
        return SamplingConfig(**{key: value for key, value in loose.values()})
    if not isinstance(sampling, SamplingConfig):
        raise TypeError(f"{where}: sampling must be a SamplingConfig, got {type(sampling).__name__}")
    for name, (key, value) in loose.items():
        if value != defaults[name] and value != getattr(sampling, key):
            raise SamplingConflictError(
                f"{where}: {name}={value!r} disagrees with sampling.{key}={getattr(sampling, key)!r}; "
                f"give the setting once (either {name}= or sampling=)"
            )
    return sampling
