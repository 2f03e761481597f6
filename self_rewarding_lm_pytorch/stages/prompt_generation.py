"""The prompt self-generation stage (Yuan et al. 2024, step 1): the current model writes new prompts.

Its output, `prompts.jsonl` in the stage folder, feeds later stages: a preference stage (or any
stage reading a `prompt_dataset`) given `prompt_dataset="@previous"` reads the prompts of the
latest prompt-generation stage before it in the same pipeline; a path to that `prompts.jsonl`
works too (from another run, say). The model is not trained here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from self_rewarding_lm_pytorch.stages.context import StageContext, resolve_dataset

__all__ = ["PREVIOUS_PROMPTS", "PromptGenerationConfig", "resolve_prompt_dataset"]

PREVIOUS_PROMPTS = "@previous"
PROMPTS_FILE = "prompts.jsonl"


def _default_template() -> str:
    from self_rewarding_lm_pytorch.self_reward.prompt_generation import DEFAULT_FEW_SHOT_TEMPLATE

    return DEFAULT_FEW_SHOT_TEMPLATE


def _texts(data: Any, name: str) -> list[str]:
    """Prompt strings from a dataset of strings or {"prompt": ...} records."""
    items: Any = resolve_dataset(data, name=name)  # a list or a map-style Dataset with a length
    out = []
    for i in range(len(items)):
        item = items[i]
        text = item.get("prompt") if isinstance(item, dict) else item
        if not isinstance(text, str):
            raise TypeError(f"{name} item {i} must be a str or a dict with a 'prompt' str, got {item!r}")
        out.append(text)
    return out


@dataclass(frozen=True)
class PromptGenerationConfig:
    """New prompts from the current model, `num_shots` seed prompts per few-shot row (8 in the paper),
    filtered by length (characters), `parse_check(prompt) -> bool`, and near-duplicates (n-gram
    overlap >= `max_overlap` with a seed prompt, an `avoid` text, or a prompt kept before)."""

    kind: ClassVar[str] = "prompt-generation"

    seed_prompts: Any
    num_prompts: int
    num_shots: int = field(default=8, kw_only=True)
    template: str = field(default_factory=_default_template, kw_only=True)
    temperature: float = field(default=1.0, kw_only=True)
    top_p: float | None = field(default=0.9, kw_only=True)
    max_new_tokens: int = field(default=64, kw_only=True)
    stop: str | None = field(default="\n", kw_only=True)
    batch_size: int = field(default=32, kw_only=True)
    max_batches: int | None = field(default=None, kw_only=True)
    min_length: int = field(default=1, kw_only=True)
    max_length: int | None = field(default=None, kw_only=True)
    parse_check: Callable[[str], bool] | None = field(default=None, kw_only=True)
    max_overlap: float = field(default=0.7, kw_only=True)
    ngram_size: int = field(default=3, kw_only=True)
    ngram_unit: str = field(default="word", kw_only=True)
    avoid: Any = field(default=None, kw_only=True)

    def __post_init__(self):
        from self_rewarding_lm_pytorch.self_reward.prompt_generation import render_few_shot

        if self.num_prompts < 1 or self.num_shots < 1 or self.batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError("num_prompts, num_shots, batch_size and max_new_tokens must be >= 1")
        if self.parse_check is not None and not callable(self.parse_check):
            raise TypeError(f"parse_check must be a callable str -> bool, got {type(self.parse_check).__name__}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        render_few_shot(self.template, ["x"] * self.num_shots)  # a template error shows now, not mid-run
        self._filter([])  # bad filter settings fail at construction

    def _filter(self, seed: list[str]):
        from self_rewarding_lm_pytorch.self_reward.prompt_filters import PromptFilter

        return PromptFilter(
            seed=seed,
            avoid=[] if self.avoid is None else _texts(self.avoid, "avoid"),
            min_length=self.min_length,
            max_length=self.max_length,
            is_valid=self.parse_check,
            max_overlap=self.max_overlap,
            ngram_size=self.ngram_size,
            ngram_unit=self.ngram_unit,
        )

    def run(self, ctx: StageContext) -> dict:
        from self_rewarding_lm_pytorch.self_reward.prompt_generation import generate_prompts

        seed = _texts(self.seed_prompts, "seed_prompts")
        result = generate_prompts(
            ctx.model,
            ctx.tokenizer,
            seed,
            num_prompts=self.num_prompts,
            prompt_filter=self._filter(seed),
            num_shots=self.num_shots,
            template=self.template,
            temperature=self.temperature,
            top_p=self.top_p,
            max_new_tokens=self.max_new_tokens,
            stop=self.stop,
            batch_size=self.batch_size,
            max_batches=self.max_batches,
            out_dir=ctx.stage_dir if ctx.is_main else None,
            seed=ctx.seed,
            resume=ctx.resume,
        )
        return {"prompts": result.stats, "num_prompts": len(result.prompts)}


def resolve_prompt_dataset(data: Any, ctx: StageContext, *, name: str = "prompt_dataset"):
    """`resolve_dataset`, plus "@previous": the prompts of the latest prompt-generation stage before this one."""
    if not (isinstance(data, (str, os.PathLike)) and str(data) == PREVIOUS_PROMPTS):
        return resolve_dataset(data, name=name)
    here = Path(ctx.stage_dir)
    index = int(here.name.split("-", 1)[0])
    for earlier in range(index - 1, 0, -1):
        path = here.parent / f"{earlier:02d}-{PromptGenerationConfig.kind}" / PROMPTS_FILE
        if path.exists():
            return resolve_dataset(path, name=name)
    raise ValueError(
        f'{name}="{PREVIOUS_PROMPTS}" but no prompt-generation stage ran before {here.name} in {here.parent}'
    )
