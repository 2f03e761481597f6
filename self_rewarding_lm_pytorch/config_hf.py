"""The Hugging Face parts of a pipeline file: `[model] hf`, `[tokenizer] hf`, `[lora]`, `mixed_precision`.

    mixed_precision = "bf16"          # "no", "fp16" or "bf16" (the Accelerator's setting)
    [model]
    hf = "models/my-llama"            # a save_pretrained folder; relative to this file
    [tokenizer]                       # optional: the tokenizer comes from the model's folder otherwise
    hf = "models/my-tokenizer"
    [lora]                            # optional: LoRA through peft (peft's defaults for what is left out)
    r = 8
    alpha = 16
    dropout = 0.05
    target_modules = ["q_proj", "v_proj"]
    save_merged = true                # also write each stage's model/merged/ (the LoRA update folded in)

Validated as strictly as the rest of the file: unknown keys, wrong types, missing folders and a
`[lora]` table without an HF model are `ConfigError`s naming the place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["HFSections", "LoraSection", "build_hf_model", "parse_hf_sections"]

MIXED_PRECISION = ("no", "fp16", "bf16")


@dataclass(frozen=True)
class LoraSection:
    """The [lora] table; None leaves peft's own default."""

    r: int = 8
    alpha: float | None = None
    dropout: float = 0.0
    target_modules: tuple[str, ...] | None = None
    save_merged: bool = False  # also write each stage's merged model (SelfRewardingTrainer's save_merged)

    def peft_config(self):
        from peft import LoraConfig

        kwargs: dict[str, Any] = dict(r=self.r, lora_dropout=self.dropout, task_type="CAUSAL_LM")
        if self.alpha is not None:
            kwargs["lora_alpha"] = self.alpha
        if self.target_modules is not None:
            kwargs["target_modules"] = list(self.target_modules)
        return LoraConfig(**kwargs)


@dataclass(frozen=True)
class HFSections:
    model: Path | None = None
    tokenizer: Path | None = None
    lora: LoraSection | None = None
    mixed_precision: str | None = None


def _folder(value: Any, base_dir: Path, where: str) -> Path:
    from self_rewarding_lm_pytorch.config_values import ConfigError

    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected a folder path (str), got {value!r}")
    path = Path(value) if Path(value).is_absolute() else base_dir / value
    if not path.is_dir():
        raise ConfigError(f"{where}: no such folder {path} (a save_pretrained folder; nothing is downloaded)")
    return path


def _lora(table: Any, where: str) -> LoraSection:
    from self_rewarding_lm_pytorch.config_values import ConfigError, convert_value

    if not isinstance(table, dict):
        raise ConfigError(f"{where}: [lora] must be a table")
    unknown = sorted(set(table) - {"r", "alpha", "dropout", "target_modules", "save_merged"})
    if unknown:
        raise ConfigError(
            f"{where}: [lora]: unknown key(s) {', '.join(unknown)}; "
            "allowed: alpha, dropout, r, save_merged, target_modules"
        )
    r = convert_value(table.get("r", LoraSection.r), int, f"{where}: [lora] r")
    alpha = convert_value(table["alpha"], float, f"{where}: [lora] alpha") if "alpha" in table else None
    dropout = convert_value(table.get("dropout", LoraSection.dropout), float, f"{where}: [lora] dropout")
    targets = table.get("target_modules")
    if targets is not None:
        targets = tuple(convert_value(targets, list[str], f"{where}: [lora] target_modules"))
        if not targets:
            raise ConfigError(f"{where}: [lora] target_modules is empty")
    if r < 1 or (alpha is not None and alpha <= 0) or not 0 <= dropout < 1:
        raise ConfigError(f"{where}: [lora] needs r >= 1, alpha > 0 and dropout in [0, 1); got {r}, {alpha}, {dropout}")
    save_merged = convert_value(table.get("save_merged", LoraSection.save_merged), bool, f"{where}: [lora] save_merged")
    return LoraSection(r, alpha, dropout, targets, save_merged)


def parse_hf_sections(raw: dict, *, where: str, base_dir: Path) -> HFSections:
    """The HF settings of a parsed TOML document; `raw["model"]`/`raw["tokenizer"]` are left to the caller
    when they are not HF tables."""
    from self_rewarding_lm_pytorch.config_values import ConfigError

    model_table, tokenizer = raw.get("model", {}), raw.get("tokenizer")
    model = None
    if isinstance(model_table, dict) and "hf" in model_table:
        extra = sorted(set(model_table) - {"hf"})
        if extra:
            raise ConfigError(f"{where}: [model] with hf = ... takes no other keys, got {', '.join(extra)}")
        model = _folder(model_table["hf"], base_dir, f"{where}: [model] hf")
    tokenizer_folder = None
    if isinstance(tokenizer, dict):
        if set(tokenizer) != {"hf"}:
            raise ConfigError(f'{where}: [tokenizer] takes exactly one key, hf = "folder"; got {sorted(tokenizer)}')
        if model is None:
            raise ConfigError(f"{where}: [tokenizer] hf goes with [model] hf (a Hugging Face model)")
        tokenizer_folder = _folder(tokenizer["hf"], base_dir, f"{where}: [tokenizer] hf")
    elif model is not None:
        if tokenizer is not None:
            raise ConfigError(f'{where}: a Hugging Face model takes [tokenizer] hf = "folder" (or none: its own)')
        tokenizer_folder = model
    lora = _lora(raw["lora"], where) if "lora" in raw else None
    if lora is not None and model is None:
        raise ConfigError(f'{where}: [lora] needs a Hugging Face model ([model] hf = "folder")')
    mixed = raw.get("mixed_precision")
    if mixed is not None and mixed not in MIXED_PRECISION:
        raise ConfigError(f"{where}: mixed_precision must be one of {', '.join(MIXED_PRECISION)}, got {mixed!r}")
    if mixed is not None and "mixed_precision" in raw.get("accelerate", {}):
        raise ConfigError(f"{where}: mixed_precision is given twice (top level and [accelerate]); keep one")
    return HFSections(model, tokenizer_folder, lora, mixed)


def build_hf_model(sections: HFSections):
    """(model, tokenizer, peft_config) from the folders; transformers is imported only here."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(sections.model))
    tokenizer = AutoTokenizer.from_pretrained(str(sections.tokenizer))
    return model, tokenizer, None if sections.lora is None else sections.lora.peft_config()
