"""Stage kinds by name: how config files and the CLI find a stage config class."""

from __future__ import annotations

from self_rewarding_lm_pytorch.stages.external_reward_dpo import ExternalRewardDPOConfig
from self_rewarding_lm_pytorch.stages.ppo import PPOStageConfig
from self_rewarding_lm_pytorch.stages.prompt_generation import PromptGenerationConfig
from self_rewarding_lm_pytorch.stages.self_reward_dpo import SelfRewardDPOConfig
from self_rewarding_lm_pytorch.stages.sft import SFTConfig
from self_rewarding_lm_pytorch.stages.spin import SelfPlayConfig

__all__ = ["STAGE_KINDS"]

STAGE_KINDS: dict[str, type] = {
    cls.kind: cls
    for cls in (
        SFTConfig,
        SelfPlayConfig,
        ExternalRewardDPOConfig,
        SelfRewardDPOConfig,
        PPOStageConfig,
        PromptGenerationConfig,
    )
}
