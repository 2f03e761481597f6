"""The SPIN stage: self-play against ground-truth responses (the trainer is `trainers.spin`)."""

from __future__ import annotations

from collections.abc import Sized
from dataclasses import dataclass, field
from typing import Any, ClassVar, cast

from self_rewarding_lm_pytorch.stages.context import StageContext, resolve_dataset
from self_rewarding_lm_pytorch.stages.fields import TrainingFields, train_config_of

__all__ = ["SelfPlayConfig"]


@dataclass(frozen=True)
class SelfPlayConfig(TrainingFields):
    """SPIN (Chen et al. 2024): `num_iterations` rounds of DPO with chosen = the ground-truth response,
    rejected = the previous iterate's own sample, reference = the previous iterate. `spin_λ` is the
    paper's lambda (DPO's beta); `mix_previous_synthetic` adds the last round's samples as pairs too."""

    kind: ClassVar[str] = "spin"

    train_dataset: Any
    num_iterations: int = field(default=1, kw_only=True)
    spin_λ: float = field(default=0.1, kw_only=True)
    max_seq_len: int | None = field(default=None, kw_only=True)
    gen_temperature: float = field(default=0.7, kw_only=True)
    gen_top_p: float | None = field(default=0.9, kw_only=True)
    mix_previous_synthetic: bool = field(default=False, kw_only=True)
    precompute_ref_logprobs: bool = field(default=True, kw_only=True)

    def __post_init__(self):
        super().__post_init__()
        if self.num_iterations < 1:
            raise ValueError(f"num_iterations must be >= 1, got {self.num_iterations}")
        if not self.spin_λ > 0:
            raise ValueError(f"spin_λ must be > 0, got {self.spin_λ}")

    def run(self, ctx: StageContext) -> dict:
        from self_rewarding_lm_pytorch.trainers.spin import train_spin_iteration

        dataset = resolve_dataset(self.train_dataset, name="train_dataset")
        items = [
            dataset[i] for i in range(len(cast(Sized, dataset)))
        ]  # mock datasets draw anew per index: fix them once
        max_seq_len = self.max_seq_len or getattr(ctx.model, "max_seq_len", None)
        if max_seq_len is None:
            raise ValueError("SelfPlayConfig needs max_seq_len: the model has no max_seq_len attribute")
        previous, steps = None, []
        for k in range(self.num_iterations):
            result, generated = train_spin_iteration(
                ctx.model,
                items,
                tokenizer=ctx.tokenizer,
                accelerator=ctx.accelerator,
                run_dir=ctx.stage_dir / f"iteration-{k + 1}",
                config=train_config_of(self, seed=ctx.seed + k, progress=ctx.progress),
                max_seq_len=max_seq_len,
                lambda_=self.spin_λ,
                previous_synthetic=previous if self.mix_previous_synthetic else None,
                temperature=self.gen_temperature,
                top_p=self.gen_top_p,
                precompute_ref_logprobs=self.precompute_ref_logprobs,
                resume=ctx.resume,
                seed=ctx.seed + k,
            )
            previous = generated
            steps.append(result.steps)
        return {"train_steps": steps}
