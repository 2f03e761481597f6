"""Prompt self-generation, the first step of Yuan et al. (2024): new prompts written by the current model.

Self-Instruct style (Wang et al. 2023): each row shows the model `num_shots` seed prompts (8 in the
paper) through a few-shot template and lets it write the next one. The new prompts are filtered
(`prompt_filters.PromptFilter`: unfinished, length, a parse check, near-duplicates of the seed, of
texts to avoid and of each other by n-gram overlap) until `num_prompts` are kept.

Files in `out_dir`: `candidates.jsonl`, one line per batch (every generated text, kept or the reason
it was dropped), streamed so a crash loses at most one batch; at the end `prompts.jsonl`
({"prompt": ...} per kept prompt, the format every stage's `prompt_dataset` reads) and `stats.json`
(counts of what was generated, kept and dropped, by reason). Batch b draws its shots and samples from
generators seeded by (seed, b), so a resumed run writes the same files as an uninterrupted one.
"""

from __future__ import annotations

import importlib
import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from beartype import beartype
from torch import nn

from self_rewarding_lm_pytorch.core.files import JsonlAppender, atomic_write_json, read_jsonl, write_jsonl
from self_rewarding_lm_pytorch.self_reward.prompt_filters import DROP_REASONS, PromptFilter

__all__ = ["DEFAULT_FEW_SHOT_TEMPLATE", "PromptGenerationResult", "generate_prompts", "render_few_shot"]

# Self-Instruct's layout: numbered tasks, the model writes the next one and ends it with a newline.
DEFAULT_FEW_SHOT_TEMPLATE = (
    "Come up with a new task like these.\n{% for example in examples %}Task {{ loop.index }}: {{ example }}\n"
    "{% endfor %}Task {{ examples | length + 1 }}:"
)


def _environment():
    """The project's sandboxed jinja2 environment: a template cannot reach Python's object graph."""
    try:  # the shared helper (core/templates.py), where it exists
        return importlib.import_module("self_rewarding_lm_pytorch.core.templates").sandboxed_environment()
    except ImportError:
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        return ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)


def render_few_shot(template: str, examples: Sequence[str]) -> str:
    """The few-shot prompt for `examples` (a template sees `examples`, a list of strings)."""
    return _environment().from_string(template).render(examples=list(examples))


@dataclass
class PromptGenerationResult:
    prompts: list[str]
    stats: dict


def _cut(text: str, stop: str | None, ended: bool) -> tuple[str, bool]:
    """(prompt, finished): the text before the first stop string; unfinished if neither a stop nor EOS came."""
    if stop and stop in text:
        return text[: text.index(stop)].strip(), True
    return text.strip(), ended


def _replay(path: Path, keep: PromptFilter) -> tuple[list[dict], list[str]]:
    """Batches already written, with the filter brought to the state it had after them."""
    batches = read_jsonl(path, ignore_partial_last_line=True) if path.exists() else []
    kept = []
    for batch in batches:
        for row in batch["candidates"]:
            if row["dropped"] is None:
                keep.indexes["generated"].add(row["prompt"])
                kept.append(row["prompt"])
    return batches, kept


@beartype
@torch.no_grad()
def generate_prompts(
    model: nn.Module,
    tokenizer,
    seed_prompts: Sequence[str],
    *,
    num_prompts: int,
    prompt_filter: PromptFilter,
    num_shots: int = 8,
    template: str = DEFAULT_FEW_SHOT_TEMPLATE,
    temperature: float = 1.0,
    top_p: float | None = 0.9,
    max_new_tokens: int = 64,
    stop: str | None = "\n",
    batch_size: int = 32,
    max_batches: int | None = None,
    out_dir: str | Path | None = None,
    seed: int = 0,
    resume: bool = False,
) -> PromptGenerationResult:
    """New prompts from `model`, `num_shots` seed prompts per few-shot row, filtered by `prompt_filter`.

    Stops at `num_prompts` kept or after `max_batches` batches (default: ten times the batches
    needed if every prompt were kept), whichever comes first; fewer prompts is not an error, the
    stats say why.
    """
    from self_rewarding_lm_pytorch.core.sampling import sample

    if not 1 <= num_shots <= len(seed_prompts):
        raise ValueError(f"num_shots must be in 1..{len(seed_prompts)} (the seed prompts), got {num_shots}")
    if num_prompts < 1 or batch_size < 1:
        raise ValueError("num_prompts and batch_size must be >= 1")
    render_few_shot(template, seed_prompts[:num_shots])  # a broken template fails before any sampling
    max_batches = max_batches or 10 * math.ceil(num_prompts / batch_size)
    path = None if out_dir is None else Path(out_dir) / "candidates.jsonl"
    if path is not None and path.exists() and not resume:
        path.unlink()  # a fresh run (the pipeline decides when resuming is right)
    batches, kept = _replay(path, prompt_filter) if path is not None else ([], [])
    log = JsonlAppender(path) if path is not None else None
    try:
        for b in range(len(batches), max_batches):
            if len(kept) >= num_prompts:
                break
            batch_seed = (seed * 1_000_003 + b) % 2**63  # stage seeds may be 64-bit hashes
            rng = random.Random(batch_seed)
            shots = [rng.sample(list(seed_prompts), num_shots) for _ in range(batch_size)]
            out = sample(
                model,
                [torch.tensor(tokenizer.encode(render_few_shot(template, s)), dtype=torch.long) for s in shots],
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                eos_id=tokenizer.eos_id,
                pad_id=tokenizer.pad_id,
                generator=torch.Generator().manual_seed(batch_seed),
            )
            ended = [
                bool(m.any()) and int(ids[m][-1]) == tokenizer.eos_id
                for ids, m in zip(out.response_ids, out.response_mask, strict=True)
            ]
            rows = []
            for text, has_eos in zip(out.texts(tokenizer), ended, strict=True):
                prompt, finished = _cut(text, stop, has_eos)
                reason = (
                    prompt_filter.reason_to_drop(prompt, finished=finished) if len(kept) < num_prompts else "enough"
                )
                rows.append({"prompt": prompt, "dropped": reason})
                if reason is None:
                    kept.append(prompt)
            batches.append({"batch": b, "candidates": rows})
            if log is not None:
                log.write(batches[-1])
    finally:
        if log is not None:
            log.close()
    stats = _stats(batches, kept, num_prompts)
    if out_dir is not None:
        write_jsonl(Path(out_dir) / "prompts.jsonl", [{"prompt": p} for p in kept])
        atomic_write_json(Path(out_dir) / "stats.json", stats)
    return PromptGenerationResult(kept, stats)


def _stats(batches: list[dict], kept: list[str], wanted: int) -> dict:
    reasons = Counter(row["dropped"] for batch in batches for row in batch["candidates"] if row["dropped"])
    return {
        "wanted": wanted,
        "kept": len(kept),
        "generated": sum(len(batch["candidates"]) for batch in batches),
        "batches": len(batches),
        "dropped": {reason: reasons.get(reason, 0) for reason in (*DROP_REASONS, "enough")},
    }
