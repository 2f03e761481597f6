"""How a pipeline file's values are checked: `ConfigError`, the annotation checker, file paths,
`{ import = ... }` values, and a stage's table against its config dataclass.

Apart from config_file.py (the file's layout, parsing and overrides) because these rules apply to
one value or one table wherever it sits; config_hf.py checks its sections with them too.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import importlib
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

__all__ = ["ConfigError", "DeferredImport", "check_table", "convert_value", "import_object", "validate_stage"]


class ConfigError(ValueError):
    """A pipeline file is invalid; the message names the file, the place and the problem."""


@dataclass(frozen=True)
class DeferredImport:
    """An `{ import = ... }` value left unimported (`srlm run --check`): only its spelling was checked."""

    spec: str


def import_object(spec: str, *, where: str = "import") -> Any:
    """The object named by `"package.module:attribute"`."""
    if not isinstance(spec, str) or ":" not in spec:
        raise ConfigError(f"{where}: expected 'package.module:name', got {spec!r}")
    module_name, attr = spec.split(":", 1)
    try:
        obj = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"{where}: cannot import module {module_name!r} ({err})") from None
    except Exception as err:  # the module's own code failed while importing
        raise ConfigError(f"{where}: importing {module_name!r} failed ({type(err).__name__}: {err})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{where}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def convert_value(value: Any, tp: Any, where: str) -> Any:
    """`value` checked against the annotation `tp` (and lists made tuples where asked), or ConfigError."""
    if tp is Any or tp is object:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        for option in args:
            try:
                return convert_value(value, option, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{where}: expected one of {', '.join(map(repr, args))}, got {value!r}")
    if origin in (tuple, list, collections.abc.Sequence) and isinstance(value, list):
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            items = [convert_value(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
        elif origin is tuple and args:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            items = [convert_value(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(args, value, strict=True))]
        else:
            items = [convert_value(v, args[0], f"{where}[{i}]") if args else v for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if isinstance(value, dict):
            return value
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str or tp in (Path, os.PathLike) or (isinstance(tp, type) and issubclass(tp, os.PathLike)):
        if isinstance(value, str):
            return value
    elif tp is type(None):
        pass  # TOML has no null: leave the key out to get None
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def _is_path_field(name: str, tp: Any) -> bool:
    """Fields whose string values name files: datasets, and anything annotated as a path."""
    if name.endswith("dataset") or name.endswith("_data") or name in ("train_data", "valid_data"):
        return True
    if name in ("seed_prompts", "avoid", "judge_examples"):  # prompt generation, judge-alive mixing
        return True
    text = str(tp)
    return "Path" in text or "PathLike" in text


def _field_types(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # an annotation naming something only imported for type checking
        hints = {}
        module = importlib.import_module(cls.__module__)
        for f in dataclasses.fields(cls):
            try:  # one field at a time, so one unresolvable annotation leaves the others checked
                one = types.SimpleNamespace(__annotations__={f.name: f.type})
                hints[f.name] = typing.get_type_hints(one, globalns=vars(module))[f.name]
            except Exception:
                hints[f.name] = Any
        return hints


def _resolve_value(name: str, value: Any, tp: Any, where: str, base_dir: Path, imports: bool = True) -> Any:
    if isinstance(value, dict) and set(value) == {"import"}:
        if not imports:
            if not isinstance(value["import"], str) or ":" not in value["import"]:
                raise ConfigError(f"{where}: expected 'package.module:name', got {value['import']!r}")
            return DeferredImport(value["import"])
        obj = import_object(value["import"], where=where)
        if "Callable" in str(tp) and not callable(obj) and "Dataset" not in str(tp):
            raise ConfigError(f"{where}: {value['import']} is not callable")
        return obj
    if value == "@previous":  # the prompts of the pipeline's latest prompt-generation stage (stages.prompt_generation)
        return value
    if isinstance(value, str) and _is_path_field(name, tp):
        path = Path(value) if Path(value).is_absolute() else base_dir / value
        if not path.exists():
            raise ConfigError(f"{where}: no such file {path}")
        return str(path)
    return convert_value(value, tp, where)


def validate_stage(
    kind: str, table: dict, stage_kinds: dict[str, type], *, base_dir: Path, where: str, imports: bool = True
) -> dict:
    """The keyword arguments for `stage_kinds[kind]`, checked against its dataclass fields
    (`imports=False`: `{ import = ... }` values become `DeferredImport`s, nothing is imported)."""
    if kind not in stage_kinds:
        raise ConfigError(f"{where}: unknown stage kind {kind!r}; known kinds: {', '.join(sorted(stage_kinds))}")
    cls = stage_kinds[kind]
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} for a {kind!r} stage "
            f"({cls.__name__}); its fields are: {', '.join(fields)}"
        )
    required = [
        n
        for n, f in fields.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and n not in table
    ]
    if required:
        raise ConfigError(
            f"{where}: missing required field{'s' if len(required) > 1 else ''} {', '.join(required)} "
            f"for a {kind!r} stage"
        )
    hints = _field_types(cls)
    return {
        name: _resolve_value(name, value, hints.get(name, Any), f"{where}.{name}", base_dir, imports)
        for name, value in table.items()
    }


def check_table(raw: dict, key: str, where: str) -> dict:
    """A copy of the table `raw[key]` (empty when the key is absent), or ConfigError naming `[key]`."""
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: [{key}] must be a table, got {type(value).__name__}")
    return dict(value)
