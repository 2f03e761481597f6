"""The external-reward DPO stage: pairs scored by a reward model or any scoring callable."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from self_rewarding_lm_pytorch.core.reward_source import check_reward_source, scoring_fn
from self_rewarding_lm_pytorch.stages.context import StageContext
from self_rewarding_lm_pytorch.stages.preference_dpo import _PreferenceDPOFields

__all__ = ["ExternalRewardDPOConfig"]


@dataclass(frozen=True)
class ExternalRewardDPOConfig(_PreferenceDPOFields):
    """DPO on pairs scored by an external reward source (`reward_model=`): a RewardModel (scored through
    its own tokenizer) or any `(prompts, responses) -> scores` callable."""

    kind: ClassVar[str] = "external-reward-dpo"

    reward_model: Any
    prompt_dataset: Any
    num_generated_preference_pairs: int

    def __post_init__(self):
        super().__post_init__()
        check_reward_source(self.reward_model, name="reward_model")

    def _scoring_kwargs(self, ctx: StageContext) -> dict:
        return dict(reward_fn=scoring_fn(self.reward_model, name="reward_model"))
