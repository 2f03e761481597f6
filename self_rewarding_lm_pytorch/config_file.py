"""Pipelines from a TOML file: parse, validate everything before training, then build.

    run_dir = "runs/my-run"          # the run folder (never silently overwritten)
    seed = 0
    tokenizer = "byte"               # or "package.module:factory" returning a Tokenizer
    init_checkpoint = "m.safetensors"   # optional starting weights (checkpoint.load_model)
    [model]                          # x-transformers TransformerWrapper kwargs
    max_seq_len = 128                # num_tokens defaults to the tokenizer's vocab_size
    [model.attn_layers]              # Decoder kwargs
    dim = 64
    depth = 2
    [judge]                          # optional RewardConfig kwargs for the self-judge
    [accelerate]                     # accelerate.Accelerator kwargs, e.g. cpu = true
    [[stages]]                       # in order; kind + the stage config's own fields
    # A Hugging Face model instead: [model] hf = "folder", optional [tokenizer] hf, [lora] and
    # mixed_precision (see config_hf.py).
    kind = "sft"
    train_dataset = "data/sft.jsonl" # relative paths are relative to this file

A value TOML cannot express (a callable, a reward model) is written as a table:
`{ import = "package.module:name" }` imports an object. Every problem (unknown key, wrong type,
missing required field, missing file, unknown stage kind) is a `ConfigError` naming the place.

Security: an import runs that module's code, with your permissions, as a Python script would. Run
only pipeline files you trust; `find_imports` (and `srlm run --check`) lists every import a file
would perform without performing any.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import importlib
import os
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

if sys.version_info >= (3, 11):
    import tomllib
else:  # the same parser, before it joined the standard library
    import tomli as tomllib

__all__ = [
    "ConfigError",
    "DeferredImport",
    "PipelineFile",
    "apply_override",
    "build_model",
    "build_reward_config",
    "build_stage_configs",
    "build_tokenizer",
    "find_imports",
    "import_object",
    "load_model_section",
    "load_pipeline_file",
    "parse_pipeline",
    "read_pipeline_toml",
    "validate_stage",
]

TOP_LEVEL_KEYS = {"run_dir", "seed", "tokenizer", "init_checkpoint", "model", "judge", "accelerate", "stages"}
TOP_LEVEL_KEYS |= {"lora", "mixed_precision"}  # Hugging Face models (config_hf.py)


class ConfigError(ValueError):
    """A pipeline file is invalid; the message names the file, the place and the problem."""


@dataclass(frozen=True)
class DeferredImport:
    """An `{ import = ... }` value left unimported (`srlm run --check`): only its spelling was checked."""

    spec: str


def find_imports(raw: dict) -> list[tuple[str, str]]:
    """(place, "package.module:name") for every import a parsed pipeline file would perform, in file
    order, without importing anything: the tokenizer factory and each `{ import = ... }` table."""
    found = []
    tokenizer = raw.get("tokenizer")
    if isinstance(tokenizer, str) and tokenizer != "byte":
        found.append(("tokenizer", tokenizer))

    def walk(node: Any, where: str):
        if isinstance(node, dict):
            if set(node) == {"import"}:
                found.append((where, str(node["import"])))
                return
            for key, value in node.items():
                walk(value, f"{where}.{key}" if where else str(key))
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}[{i}]")

    walk({k: v for k, v in raw.items() if k != "tokenizer"}, "")
    return found


@dataclass(frozen=True)
class PipelineFile:
    """A validated pipeline file: plain values, paths resolved, stage kwargs type-checked."""

    path: Path
    run_dir: Path
    seed: int | None
    tokenizer: str
    model: dict
    init_checkpoint: Path | None
    judge: dict | None
    accelerate: dict
    stages: list[tuple[str, dict]] = field(default_factory=list)
    hf: Any = None  # config_hf.HFSections: a Hugging Face model, its tokenizer, LoRA, mixed precision


def _stage_kinds() -> dict[str, type]:
    from self_rewarding_lm_pytorch.stages.registry import STAGE_KINDS

    return STAGE_KINDS


# --- overrides: `--set stages.0.num_train_steps=2` -------------------------------------------


def apply_override(raw: dict, assignment: str) -> None:
    """Set a dotted key (list items by index) to a TOML value; bare words are taken as strings."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE")
    key, text = assignment.split("=", 1)
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    parts = key.strip().split(".")
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"--set {key}: no item {part} in {'.'.join(parts[:i]) or 'the file'}")
            node = node[int(part)]
        else:
            node = node.setdefault(part, {})
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(f"--set {key}: no item {last}")
        node[int(last)] = value
    else:
        node[last] = value


# --- values -----------------------------------------------------------------------------------


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


def _convert(value: Any, tp: Any, where: str) -> Any:
    """`value` checked against the annotation `tp` (and lists made tuples where asked), or ConfigError."""
    if tp is Any or tp is object:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        for option in args:
            try:
                return _convert(value, option, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{where}: expected one of {', '.join(map(repr, args))}, got {value!r}")
    if origin in (tuple, list, collections.abc.Sequence) and isinstance(value, list):
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            items = [_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
        elif origin is tuple and args:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            items = [_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(args, value, strict=True))]
        else:
            items = [_convert(v, args[0], f"{where}[{i}]") if args else v for i, v in enumerate(value)]
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
    return _convert(value, tp, where)


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


def _check_table(raw: dict, key: str, where: str) -> dict:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: [{key}] must be a table, got {type(value).__name__}")
    return dict(value)


def parse_pipeline(
    raw: dict, *, path: Path, stage_kinds: dict[str, type] | None = None, imports: bool = True
) -> PipelineFile:
    """Validate a parsed TOML document (see the module docstring for the schema); `imports=False`
    checks everything but leaves `{ import = ... }` values as `DeferredImport`s."""
    stage_kinds = _stage_kinds() if stage_kinds is None else stage_kinds
    where, base_dir = str(path), path.parent
    unknown = sorted(set(raw) - TOP_LEVEL_KEYS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown top-level key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(TOP_LEVEL_KEYS))}"
        )
    if "run_dir" not in raw:
        raise ConfigError(f"{where}: missing run_dir (the run folder)")
    run_dir = Path(_convert(raw["run_dir"], str, f"{where}: run_dir"))
    seed = _convert(raw["seed"], int, f"{where}: seed") if "seed" in raw else None
    from self_rewarding_lm_pytorch.config_hf import parse_hf_sections

    hf = parse_hf_sections(raw, where=where, base_dir=base_dir)
    if hf.model is not None:
        raw = {k: v for k, v in raw.items() if k not in ("model", "tokenizer")} | {"tokenizer": "byte"}
        if "init_checkpoint" in raw:
            raise ConfigError(
                f"{where}: init_checkpoint is for x-transformers models; [model] hf loads its own weights"
            )
    tokenizer = _convert(raw.get("tokenizer", "byte"), str, f"{where}: tokenizer")
    if tokenizer != "byte" and ":" not in tokenizer:
        raise ConfigError(
            f'{where}: tokenizer {tokenizer!r}: use "byte" or "package.module:factory" '
            "(a Tokenizer object or a zero-argument callable returning one); tokenizer files are not read directly"
        )
    init = raw.get("init_checkpoint")
    if init is not None:
        init = Path(_convert(init, str, f"{where}: init_checkpoint"))
        init = init if init.is_absolute() else base_dir / init
        if not init.exists():
            raise ConfigError(f"{where}: init_checkpoint: no such file {init}")
    model = _check_table(raw, "model", where)
    if not isinstance(model.get("attn_layers", {}), dict):
        raise ConfigError(f"{where}: [model.attn_layers] must be a table of Decoder kwargs")
    judge = _check_table(raw, "judge", where) if "judge" in raw else None
    accelerate = _check_table(raw, "accelerate", where)
    stages_raw = raw.get("stages")
    if not isinstance(stages_raw, list) or not stages_raw:
        raise ConfigError(f"{where}: no [[stages]]: give at least one stage")
    stages = []
    for i, table in enumerate(stages_raw):
        here = f"{where}: stages[{i}]"
        if not isinstance(table, dict) or "kind" not in table:
            raise ConfigError(f"{here}: missing kind (one of {', '.join(sorted(stage_kinds))})")
        table = dict(table)
        kind = table.pop("kind")
        if not isinstance(kind, str):
            raise ConfigError(f"{here}: kind must be a string (one of {', '.join(sorted(stage_kinds))}), got {kind!r}")
        stages.append((kind, validate_stage(kind, table, stage_kinds, base_dir=base_dir, where=here, imports=imports)))
    if hf.mixed_precision is not None:
        accelerate["mixed_precision"] = hf.mixed_precision
    return PipelineFile(path, run_dir, seed, tokenizer, model, init, judge, accelerate, stages, hf=hf)


def _read_toml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"no such config file: {path}")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from None


def read_pipeline_toml(path: str | os.PathLike, *, overrides: tuple[str, ...] = ()) -> dict:
    """The parsed TOML document with the `KEY=VALUE` overrides applied (nothing validated or imported)."""
    raw = _read_toml(Path(path))
    for assignment in overrides:
        apply_override(raw, assignment)
    return raw


def load_pipeline_file(
    path: str | os.PathLike, *, overrides: tuple[str, ...] = (), stage_kinds=None, imports: bool = True
) -> PipelineFile:
    """Read, override (`KEY=VALUE` strings) and validate a pipeline TOML file."""
    raw = read_pipeline_toml(path, overrides=overrides)
    return parse_pipeline(raw, path=Path(path), stage_kinds=stage_kinds, imports=imports)


# --- building ---------------------------------------------------------------------------------


def build_tokenizer(spec: str):
    """`"byte"` -> ByteTokenizer; `"package.module:name"` -> that Tokenizer, or what calling it returns."""
    from self_rewarding_lm_pytorch.core.tokenizer import ByteTokenizer, as_tokenizer

    if spec == "byte":
        return ByteTokenizer()
    obj = import_object(spec, where="tokenizer")
    tokenizer = obj() if isinstance(obj, type) or not hasattr(obj, "encode") else obj
    try:
        return as_tokenizer(tokenizer)
    except TypeError as err:
        raise ConfigError(f"tokenizer {spec!r}: {err}") from None


def build_model(model_kwargs: dict, tokenizer, *, where: str = ""):
    """A `TransformerWrapper(attn_layers=Decoder(...))`; x-transformers' own errors become ConfigError
    (their message starts with `where`, e.g. the file's path, when given)."""
    try:
        return _build_model(model_kwargs, tokenizer)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}" if where else str(err)) from None


def _build_model(model_kwargs: dict, tokenizer):
    from x_transformers import Decoder, TransformerWrapper

    kwargs = dict(model_kwargs)
    decoder_kwargs = dict(kwargs.pop("attn_layers", {}))
    if "num_tokens" not in kwargs:
        if getattr(tokenizer, "vocab_size", None) is None:
            raise ConfigError("[model]: num_tokens is required when the tokenizer has no vocab_size")
        kwargs["num_tokens"] = tokenizer.vocab_size
    for key in ("max_seq_len",):
        if key not in kwargs:
            raise ConfigError(f"[model]: missing {key}")
    if "dim" not in decoder_kwargs:
        raise ConfigError("[model.attn_layers]: missing dim")
    try:
        return TransformerWrapper(**kwargs, attn_layers=Decoder(**decoder_kwargs))
    except (TypeError, AssertionError, ValueError, RuntimeError) as err:  # RuntimeError: e.g. a negative dim
        raise ConfigError(f"[model]: x-transformers rejected the model kwargs: {err}") from None


def build_stage_configs(pipeline: PipelineFile, stage_kinds: dict[str, type] | None = None) -> list:
    """The stage config objects, in order (constructors do no I/O; their own checks may raise)."""
    stage_kinds = _stage_kinds() if stage_kinds is None else stage_kinds
    configs = []
    for i, (kind, kwargs) in enumerate(pipeline.stages):
        try:
            configs.append(stage_kinds[kind](**kwargs))
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{pipeline.path}: stages[{i}] ({kind}): {err}") from None
    return configs


def build_reward_config(judge: dict | None, *, where: str = "") -> Any:
    """The self-judge `RewardConfig` from the [judge] table, or None for the library default."""
    if judge is None:
        return None
    from self_rewarding_lm_pytorch.self_reward.judge import RewardConfig

    judge = {k: tuple(v) if isinstance(v, list) else v for k, v in judge.items()}  # score_range
    try:
        return RewardConfig(**judge)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}{': ' if where else ''}[judge]: {err}") from None


def load_model_section(path: str | os.PathLike, *, require_model: bool = True) -> dict:
    """`{"model", "tokenizer", "judge", "hf"}` from a TOML file (a pipeline file or one with just these).

    `hf` holds the Hugging Face sections (`config_hf.HFSections`, validated as `srlm run` validates them);
    with `[model] hf = "folder"` the tokenizer is the HF one and "tokenizer" is None.
    """
    from self_rewarding_lm_pytorch.config_hf import parse_hf_sections

    path = Path(path)
    raw = _read_toml(path)
    unknown = sorted(set(raw) - TOP_LEVEL_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {', '.join(unknown)}")
    if require_model and "model" not in raw:
        raise ConfigError(f"{path}: no [model] table")
    hf = parse_hf_sections(raw, where=str(path), base_dir=path.parent)
    tokenizer = None if hf.model is not None else _convert(raw.get("tokenizer", "byte"), str, f"{path}: tokenizer")
    judge = _check_table(raw, "judge", str(path)) if "judge" in raw else None
    return {"model": _check_table(raw, "model", str(path)), "tokenizer": tokenizer, "judge": judge, "hf": hf}
