"""The SPIN stage: self-play against ground-truth responses (the trainer is `trainers.spin`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from self_rewarding_lm_pytorch.core.sampling_config import SamplingConfig
from self_rewarding_lm_pytorch.stages.context import StageContext, resolve_dataset
from self_rewarding_lm_pytorch.stages.fields import TrainingFields, train_config_of
from self_rewarding_lm_pytorch.stages.sampling import as_sampling_config, stage_sampling

__all__ = ["SelfPlayConfig"]


@dataclass(frozen=True)
class SelfPlayConfig(TrainingFields):
    """SPIN (Chen et al. 2024): `num_iterations` rounds of DPO with chosen = the ground-truth response,
    rejected = the previous iterate's own sample, reference = the previous iterate. `spin_λ` is the
    paper's lambda (DPO's beta); `mix_previous_synthetic` adds the last round's samples as pairs too.
    `dpo_loss_type` (default the paper's "sigmoid") with `dpop_lambda`, `simpo_gamma`, `orpo_lambda`
    swaps in another `dpo_loss` variant, as in the DPO stages."""

    kind: ClassVar[str] = "spin"

    train_dataset: Any
    num_iterations: int = field(default=1, kw_only=True)
    spin_λ: float = field(default=0.1, kw_only=True)
    max_seq_len: int | None = field(default=None, kw_only=True)
    gen_temperature: float = field(default=0.7, kw_only=True)
    gen_top_p: float | None = field(default=0.9, kw_only=True)
    mix_previous_synthetic: bool = field(default=False, kw_only=True)
    precompute_ref_logprobs: bool = field(default=True, kw_only=True)
    dpo_loss_type: str = field(default="sigmoid", kw_only=True)
    dpop_lambda: float = field(default=50.0, kw_only=True)
    simpo_gamma: float = field(default=0.5, kw_only=True)
    orpo_lambda: float = field(default=0.1, kw_only=True)

    sampling: SamplingConfig | dict | None = field(default=None, kw_only=True)

    _SAMPLING_FIELDS: ClassVar[dict[str, str]] = {"gen_temperature": "temperature", "gen_top_p": "top_p"}

    @property
    def sampling_config(self) -> SamplingConfig:
        """How the previous iterate samples: `sampling=` or the loose `gen_*` fields (one rule)."""
        return stage_sampling(self, "sampling", self._SAMPLING_FIELDS)

    def __post_init__(self):
        super().__post_init__()
        from self_rewarding_lm_pytorch.trainers.preference_loss import PreferenceLoss

        if self.num_iterations < 1:
            raise ValueError(f"num_iterations must be >= 1, got {self.num_iterations}")
        if not self.spin_λ > 0:
            raise ValueError(f"spin_λ must be > 0, got {self.spin_λ}")
        from self_rewarding_lm_pytorch.trainers.spin_data import spin_sampling

        object.__setattr__(self, "sampling", as_sampling_config(self.sampling, where="SelfPlayConfig.sampling"))
        spin_sampling(self.sampling_config, temperature=0.7, top_p=0.9, top_k=None)  # fails here, not mid-run
        PreferenceLoss(beta=self.spin_λ, **self._loss_kwargs())  # bad loss settings fail here

    def _loss_kwargs(self) -> dict:
        return dict(
            loss_type=self.dpo_loss_type,
            dpop_lambda=self.dpop_lambda,
            simpo_gamma=self.simpo_gamma,
            orpo_lambda=self.orpo_lambda,
        )

    def run(self, ctx: StageContext) -> dict:
        """Builds and calls `SPINTrainer`, the one SPIN driver (iteration seeds, resume rule, files)."""
        from self_rewarding_lm_pytorch.trainers.spin import SPINTrainer

        max_seq_len = self.max_seq_len or getattr(ctx.model, "max_seq_len", None)
        if max_seq_len is None:
            raise ValueError("SelfPlayConfig needs max_seq_len: the model has no max_seq_len attribute")
        trainer = SPINTrainer(
            ctx.model,
            resolve_dataset(self.train_dataset, name="train_dataset"),
            max_seq_len=max_seq_len,
            num_iterations=self.num_iterations,
            spin_kwargs={"lambda_": self.spin_λ},
            tokenizer=ctx.tokenizer,
            mix_previous_synthetic=self.mix_previous_synthetic,
            sampling=self.sampling_config,
            precompute_ref_logprobs=self.precompute_ref_logprobs,
            **self._loss_kwargs(),
            accelerator=ctx.accelerator,
            checkpoint_folder=ctx.stage_dir,
            resume=ctx.resume,
            **train_config_of(self, seed=ctx.seed, progress=ctx.progress).to_kwargs(),
        )
        trainer()
        return {"train_steps": trainer.steps}
