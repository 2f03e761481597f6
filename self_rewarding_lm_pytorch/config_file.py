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

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Values and tables are checked in config_values.py, objects built in config_models.py; both are
# re-exported here, the module users import from.
from self_rewarding_lm_pytorch.config_models import build_model, build_reward_config, build_tokenizer
from self_rewarding_lm_pytorch.config_values import (
    ConfigError,
    DeferredImport,
    check_table,
    convert_value,
    import_object,
    validate_stage,
)

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


# --- parsing ----------------------------------------------------------------------------------


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
    run_dir = Path(convert_value(raw["run_dir"], str, f"{where}: run_dir"))
    seed = convert_value(raw["seed"], int, f"{where}: seed") if "seed" in raw else None
    from self_rewarding_lm_pytorch.config_hf import parse_hf_sections

    hf = parse_hf_sections(raw, where=where, base_dir=base_dir)
    if hf.model is not None:
        raw = {k: v for k, v in raw.items() if k not in ("model", "tokenizer")} | {"tokenizer": "byte"}
        if "init_checkpoint" in raw:
            raise ConfigError(
                f"{where}: init_checkpoint is for x-transformers models; [model] hf loads its own weights"
            )
    tokenizer = convert_value(raw.get("tokenizer", "byte"), str, f"{where}: tokenizer")
    if tokenizer != "byte" and ":" not in tokenizer:
        raise ConfigError(
            f'{where}: tokenizer {tokenizer!r}: use "byte" or "package.module:factory" '
            "(a Tokenizer object or a zero-argument callable returning one); tokenizer files are not read directly"
        )
    init = _init_checkpoint(raw.get("init_checkpoint"), where, base_dir)
    model = check_table(raw, "model", where)
    if not isinstance(model.get("attn_layers", {}), dict):
        raise ConfigError(f"{where}: [model.attn_layers] must be a table of Decoder kwargs")
    judge = check_table(raw, "judge", where) if "judge" in raw else None
    accelerate = check_table(raw, "accelerate", where)
    stages = _parse_stages(raw.get("stages"), stage_kinds, where=where, base_dir=base_dir, imports=imports)
    if hf.mixed_precision is not None:
        accelerate["mixed_precision"] = hf.mixed_precision
    return PipelineFile(path, run_dir, seed, tokenizer, model, init, judge, accelerate, stages, hf=hf)


def _init_checkpoint(value: Any, where: str, base_dir: Path) -> Path | None:
    """The starting weights' path, relative to the pipeline file, checked to exist."""
    if value is None:
        return None
    init = Path(convert_value(value, str, f"{where}: init_checkpoint"))
    init = init if init.is_absolute() else base_dir / init
    if not init.exists():
        raise ConfigError(f"{where}: init_checkpoint: no such file {init}")
    return init


def _parse_stages(
    stages_raw: Any, stage_kinds: dict[str, type], *, where: str, base_dir: Path, imports: bool
) -> list[tuple[str, dict]]:
    """(kind, checked keyword arguments) for each [[stages]] table, in order."""
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
    return stages


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
    tokenizer = None if hf.model is not None else convert_value(raw.get("tokenizer", "byte"), str, f"{path}: tokenizer")
    judge = check_table(raw, "judge", str(path)) if "judge" in raw else None
    return {"model": check_table(raw, "model", str(path)), "tokenizer": tokenizer, "judge": judge, "hf": hf}
