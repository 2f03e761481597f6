"""Runtime type checks of a config's fields against their annotations, done by beartype.

    check_field_types(config)                # every field of a dataclass instance
    check_field_types(config, names=(...))   # only these fields (a subclass's extra fields may hold datasets)

One rule for every config: a value must satisfy its field's annotation, where an int is a fine
float (a TOML file writes `learning_rate = 1`; the field is then stored as a float) and a bool is
never an int or a float (`batch_size=True` is a slip, though Python calls bool an int). Range and
choice checks stay beside each config: they are about values, not types.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable
from typing import Any

from beartype import BeartypeConf
from beartype.door import is_bearable

__all__ = [
    "ADDED_FIELD",
    "FieldTypeError",
    "check_field_types",
    "check_value_type",
    "field_hints",
    "is_added_field_at_default",
    "scalar_field_names",
]

# PEP 484's numeric tower: an int satisfies `float`.
_CONF = BeartypeConf(is_pep484_tower=True)


# Metadata of a dataclass field added after runs were first made with its config, as in
# `field(default=None, metadata=ADDED_FIELD)`: at its default, run fingerprints leave it out, so a run
# started before the field existed still resumes (its stage hashes are unchanged).
ADDED_FIELD = types.MappingProxyType({"added_field": True})


def is_added_field_at_default(instance: Any, f: dataclasses.Field) -> bool:
    """Whether `f` of `instance` is an `ADDED_FIELD` holding its default."""
    return bool(f.metadata.get("added_field")) and getattr(instance, f.name) == f.default


class FieldTypeError(TypeError, ValueError):
    """A config field holds a value of the wrong type. Also a `ValueError`, as these checks raised before."""


_HINTS: dict[type, dict[str, Any]] = {}


def field_hints(cls: type) -> dict[str, Any]:
    """The resolved annotations of a dataclass's fields."""
    if cls not in _HINTS:  # resolving string annotations is slow; a config class's never change
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _members(hint: Any) -> tuple[Any, ...]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _admits_bool(hint: Any) -> bool:
    return any(member in (bool, Any, object) for member in _members(hint))


def check_value_type(name: str, value: Any, hint: Any, *, where: str) -> Any:
    """Raise `FieldTypeError` unless `value` satisfies `hint`; return it (an int for a float as a float)."""
    ok = _admits_bool(hint) if isinstance(value, bool) else is_bearable(value, hint, conf=_CONF)
    if not ok:
        expected = getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
        raise FieldTypeError(f"{where}: {name} must be {expected}, got {type(value).__name__} {value!r}")
    if type(value) is int and float in _members(hint) and int not in _members(hint):
        return float(value)
    return value


_SCALARS = (int, float, bool, str, type(None))


def scalar_field_names(cls: type) -> tuple[str, ...]:
    """The fields of a dataclass whose annotation is built only from int, float, bool, str and None
    (datasets, callables and models are checked where they are used, not by their annotation)."""
    hints = field_hints(cls)
    return tuple(f.name for f in dataclasses.fields(cls) if all(m in _SCALARS for m in _members(hints[f.name])))


def check_field_types(config: Any, *, names: Iterable[str] | None = None) -> None:
    """Raise `FieldTypeError` naming the first field whose value does not satisfy its annotation.

    Ints given for float fields are stored as floats (frozen dataclasses too), so `1` and `1.0`
    mean the same learning rate everywhere, including in a config's fingerprint.
    """
    hints, where = field_hints(type(config)), type(config).__name__
    for name in [f.name for f in dataclasses.fields(config)] if names is None else names:
        value = getattr(config, name)
        checked = check_value_type(name, value, hints[name], where=where)
        if checked is not value:
            object.__setattr__(config, name, checked)
