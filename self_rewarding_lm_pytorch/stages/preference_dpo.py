"""What both DPO stages that make their own preference pairs share.

One iteration: sample `num_candidate_responses` answers per prompt from the current policy, score
them (the model as its own judge through the `RewardConfig` template, or `reward_model(prompts,
responses)`), pick (chosen, rejected) pairs, then train with DPO against the policy as it was at
the start of the stage (M_t is the reference for M_t+1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from self_rewarding_lm_pytorch.core.sampling_config import SamplingConfig
from self_rewarding_lm_pytorch.stages.context import StageContext, resolve_dataset
from self_rewarding_lm_pytorch.stages.fields import TrainingFields, train_config_of
from self_rewarding_lm_pytorch.stages.sampling import as_sampling_config, stage_sampling

__all__: list[str] = []


@dataclass(frozen=True)
class _PreferenceDPOFields(TrainingFields):
    """Generation, pairing and DPO settings shared by both preference stages (keyword-only)."""

    kind: ClassVar[str]

    if TYPE_CHECKING:  # fields of each stage (declared there: positional fields follow the stage's own order)

        @property
        def prompt_dataset(self) -> Any: ...

        @property
        def num_generated_preference_pairs(self) -> int: ...

    dpo_beta: float = field(default=0.1, kw_only=True)
    dpo_loss_type: str = field(default="sigmoid", kw_only=True)
    dpo_label_smoothing: float = field(default=0.0, kw_only=True)
    sft_weight: float = field(default=0.0, kw_only=True)
    dpop_lambda: float = field(default=50.0, kw_only=True)
    simpo_gamma: float = field(default=0.5, kw_only=True)
    orpo_lambda: float = field(default=0.1, kw_only=True)
    num_candidate_responses: int = field(default=4, kw_only=True)
    gen_temperature: float = field(default=0.7, kw_only=True)
    gen_top_p: float | None = field(default=0.9, kw_only=True)
    max_new_tokens: int | None = field(default=None, kw_only=True)
    pair_policy: str | Callable = field(default="best_vs_worst", kw_only=True)
    pair_policy_kwargs: dict = field(default_factory=dict, kw_only=True)
    max_passes: int = field(default=1, kw_only=True)
    generation_chunk_size: int = field(default=16, kw_only=True)
    precompute_ref_logprobs: bool = field(default=True, kw_only=True)
    max_seq_len: int | None = field(default=None, kw_only=True)
    sampling: SamplingConfig | dict | None = field(default=None, kw_only=True)
    # candidates cut at max_new_tokens are never chosen unless True (then trained without a fake EOS)
    allow_unfinished_chosen: bool = field(default=False, kw_only=True)
    # Keeping the judge alive (trainers.judge_mixing): {"prompt", "response"} judge examples whose NLL,
    # times judge_weight, joins every DPO step, judge_examples_per_pair of them per pair.
    judge_examples: Any = field(default=None, kw_only=True)
    judge_weight: float = field(default=1.0, kw_only=True)
    judge_examples_per_pair: int = field(default=1, kw_only=True)

    # the seed-compatible loose fields and the SamplingConfig field each stands for
    _SAMPLING_FIELDS: ClassVar[dict[str, str]] = {
        "gen_temperature": "temperature",
        "gen_top_p": "top_p",
        "max_new_tokens": "max_new_tokens",
    }

    @property
    def sampling_config(self) -> SamplingConfig:
        """How candidates are sampled: `sampling=` or the loose `gen_*` / `max_new_tokens` fields (one rule)."""
        return stage_sampling(self, "sampling", self._SAMPLING_FIELDS)

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "sampling", as_sampling_config(self.sampling, where=f"{type(self).__name__}.sampling"))
        _ = self.sampling_config  # a bad setting or a conflict fails at construction
        from self_rewarding_lm_pytorch.self_reward.pairs import make_pair_policy
        from self_rewarding_lm_pytorch.trainers.preference_loss import PreferenceLoss

        if self.num_generated_preference_pairs < 1:
            raise ValueError(f"num_generated_preference_pairs must be >= 1, got {self.num_generated_preference_pairs}")
        if self.num_candidate_responses < 2:
            raise ValueError(f"num_candidate_responses must be >= 2, got {self.num_candidate_responses}")
        PreferenceLoss(**self._loss_kwargs())  # bad loss settings fail here
        make_pair_policy(self.pair_policy, **self.pair_policy_kwargs)  # unknown names fail here
        if not self.judge_weight >= 0:
            raise ValueError(f"judge_weight must be >= 0, got {self.judge_weight}")
        if self.judge_examples_per_pair < 1:
            raise ValueError(f"judge_examples_per_pair must be >= 1, got {self.judge_examples_per_pair}")

    def _loss_kwargs(self) -> dict:
        """The DPO loss settings as `DPOTrainer` and `PreferenceLoss` name them."""
        return dict(
            beta=self.dpo_beta,
            loss_type=self.dpo_loss_type,
            label_smoothing=self.dpo_label_smoothing,
            sft_weight=self.sft_weight,
            dpop_lambda=self.dpop_lambda,
            simpo_gamma=self.simpo_gamma,
            orpo_lambda=self.orpo_lambda,
        )

    # --- what differs between the two stages ---

    def _scoring_kwargs(self, ctx: StageContext) -> dict:
        raise NotImplementedError

    def run(self, ctx: StageContext) -> dict:
        from self_rewarding_lm_pytorch.self_reward.pairs import make_pair_policy
        from self_rewarding_lm_pytorch.self_reward.preferences import generate_preferences
        from self_rewarding_lm_pytorch.stages.prompt_generation import resolve_prompt_dataset
        from self_rewarding_lm_pytorch.trainers.dpo import DPOTrainer

        prompts = resolve_prompt_dataset(self.prompt_dataset, ctx)
        result = generate_preferences(
            ctx.model,
            ctx.tokenizer,
            prompts,
            num_candidates=self.num_candidate_responses,
            sampling=self.sampling_config,
            num_pairs=self.num_generated_preference_pairs,
            pair_policy=make_pair_policy(self.pair_policy, **self.pair_policy_kwargs),
            out_dir=ctx.stage_dir if ctx.is_main else None,
            seed=ctx.seed,
            max_passes=self.max_passes,
            chunk_size=self.generation_chunk_size,
            resume=ctx.resume,
            progress=ctx.progress and ctx.is_main,
            accelerator=ctx.accelerator,
            allow_unfinished_chosen=self.allow_unfinished_chosen,
            **self._scoring_kwargs(ctx),
        )
        summary = {"preferences": result.stats, "num_pairs": len(result.records)}
        if not result.records:
            # Nothing to learn from is a finding, not a crash (generate_preferences has warned why):
            # the stage ends, the pipeline checkpoints it and goes on.
            ctx.accelerator.print(f"{type(self).kind}: no preference pairs, so this stage trains nothing")
            return summary | {"trained": False, "train_steps": 0}
        train_result = DPOTrainer(
            ctx.model,
            result.records,
            tokenizer=ctx.tokenizer,
            precompute_ref_logprobs=self.precompute_ref_logprobs,
            **self._loss_kwargs(),
            max_seq_len=self.max_seq_len,
            judge_data=self._judge_records(),
            judge_weight=self.judge_weight,
            judge_per_pair=self.judge_examples_per_pair,
            accelerator=ctx.accelerator,
            checkpoint_folder=ctx.stage_dir / "train",
            resume=ctx.resume,
            **train_config_of(self, seed=ctx.seed, progress=ctx.progress).to_kwargs(),
        )()
        return summary | {"trained": True, "train_steps": train_result.steps}

    def _judge_records(self):
        if self.judge_examples is None:
            return None
        return resolve_dataset(self.judge_examples, name="judge_examples")
