"""The self-rewarding DPO stage (Yuan et al. 2024): the policy judges its own candidates."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from self_rewarding_lm_pytorch.core.sampling_config import JudgeSettings, SamplingConfig
from self_rewarding_lm_pytorch.stages.context import StageContext
from self_rewarding_lm_pytorch.stages.preference_dpo import _PreferenceDPOFields
from self_rewarding_lm_pytorch.stages.sampling import as_sampling_config, stage_sampling

__all__ = ["SelfRewardDPOConfig"]


@dataclass(frozen=True)
class SelfRewardDPOConfig(_PreferenceDPOFields):
    """Self-rewarding DPO (Yuan et al. 2024): the policy judges its own candidates with the pipeline's
    `RewardConfig` (`num_sampled_reward_responses` judgments each, averaged), or `judge_model` does (OAIF)."""

    kind: ClassVar[str] = "self-reward-dpo"
    uses_judge: ClassVar[bool] = True  # the judge template is part of what this stage's results depend on

    prompt_dataset: Any
    num_generated_preference_pairs: int
    num_sampled_reward_responses: int = field(default=3, kw_only=True)
    eval_temperature: float = field(default=0.7, kw_only=True)
    eval_top_p: float | None = field(default=0.9, kw_only=True)
    judge_max_new_tokens: int | None = field(default=None, kw_only=True)
    judge_model: Any = field(default=None, kw_only=True)
    judge_sampling: SamplingConfig | dict | None = field(default=None, kw_only=True)

    _JUDGE_SAMPLING_FIELDS: ClassVar[dict[str, str]] = {
        "eval_temperature": "temperature",
        "eval_top_p": "top_p",
        "judge_max_new_tokens": "max_new_tokens",
    }

    @property
    def judge_settings(self) -> JudgeSettings:
        """How the judge samples: `judge_sampling=` or the loose `eval_*` / `judge_max_new_tokens` fields,
        `num_sampled_reward_responses` judgments per candidate."""
        sampling = stage_sampling(self, "judge_sampling", self._JUDGE_SAMPLING_FIELDS)
        return JudgeSettings(sampling, self.num_sampled_reward_responses)

    def __post_init__(self):
        super().__post_init__()
        if self.num_sampled_reward_responses < 1:
            raise ValueError(f"num_sampled_reward_responses must be >= 1, got {self.num_sampled_reward_responses}")
        where = f"{type(self).__name__}.judge_sampling"
        object.__setattr__(self, "judge_sampling", as_sampling_config(self.judge_sampling, where=where))
        _ = self.judge_settings  # a bad setting or a conflict fails at construction

    def _scoring_kwargs(self, ctx: StageContext) -> dict:
        return dict(reward_config=ctx.reward_config, judge_model=self.judge_model, judge=self.judge_settings)
