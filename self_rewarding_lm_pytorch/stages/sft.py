"""The SFT stage: supervised fine-tuning on ground-truth responses (the trainer is `trainers.sft`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from self_rewarding_lm_pytorch.stages.context import StageContext, resolve_dataset
from self_rewarding_lm_pytorch.stages.fields import TrainingFields, train_config_of

__all__ = ["SFTConfig"]


@dataclass(frozen=True)
class SFTConfig(TrainingFields):
    """Supervised fine-tuning on `(prompt, response)` items, `{"prompt", "response"}` records,
    `(token_ids, prompt_len)` pairs, or a JSONL path of records. Loss on response tokens only."""

    kind: ClassVar[str] = "sft"

    train_dataset: Any
    valid_dataset: Any = None
    max_seq_len: int | None = field(default=None, kw_only=True)
    # Dropout stays on for SFT (as in TRL's SFT trainer): turning it off is for the preference and RL
    # stages, whose losses compare the policy with a dropout-free reference.
    disable_dropout: bool = field(default=False, kw_only=True)

    def run(self, ctx: StageContext) -> dict:
        from self_rewarding_lm_pytorch.trainers.sft import train_sft

        valid = None if self.valid_dataset is None else resolve_dataset(self.valid_dataset, name="valid_dataset")
        result = train_sft(
            ctx.model,
            resolve_dataset(self.train_dataset, name="train_dataset"),
            tokenizer=ctx.tokenizer,
            accelerator=ctx.accelerator,
            run_dir=ctx.stage_dir / "train",
            config=train_config_of(self, seed=ctx.seed, progress=ctx.progress),
            valid_dataset=valid,
            resume=ctx.resume,
            max_seq_len=self.max_seq_len,
        )
        return {"train_steps": result.steps, "num_skipped": result.info.get("num_skipped", 0)}
