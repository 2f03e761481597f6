"""The external-reward DPO stage: pairs scored by a reward model or any scoring callable."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from self_rewarding_lm_pytorch.stages.context import StageContext
from self_rewarding_lm_pytorch.stages.preference_dpo import _PreferenceDPOFields, reward_fn_of

__all__ = ["ExternalRewardDPOConfig"]


@dataclass(frozen=True)
class ExternalRewardDPOConfig(_PreferenceDPOFields):
    """DPO on pairs scored by an external reward: a RewardModel or any `(prompts, responses) -> scores`."""

    kind: ClassVar[str] = "external-reward-dpo"

    reward_model: Any
    prompt_dataset: Any
    num_generated_preference_pairs: int

    def __post_init__(self):
        super().__post_init__()
        reward_fn_of(self.reward_model)

    def _scoring_kwargs(self, ctx: StageContext) -> dict:
        return dict(reward_fn=reward_fn_of(self.reward_model))
