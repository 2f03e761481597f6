"""Stage kinds by name: how config files and the CLI find a stage config class."""

from __future__ import annotations

from .ppo import PPOStageConfig
from .preference_dpo import ExternalRewardDPOConfig, SelfRewardDPOConfig
from .supervised import SelfPlayConfig, SFTConfig

__all__ = ["STAGE_KINDS"]

STAGE_KINDS: dict[str, type] = {
    cls.kind: cls for cls in (SFTConfig, SelfPlayConfig, ExternalRewardDPOConfig, SelfRewardDPOConfig, PPOStageConfig)
}
