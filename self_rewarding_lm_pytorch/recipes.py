"""Published recipes as functions returning a list of stage configs (a pipeline is just that list)."""

from __future__ import annotations

from typing import Any

from beartype import beartype

from self_rewarding_lm_pytorch.stages.self_reward_dpo import SelfRewardDPOConfig
from self_rewarding_lm_pytorch.stages.sft import SFTConfig

__all__ = ["create_default_paper_config"]


@beartype
def create_default_paper_config(
    *,
    train_sft_dataset: Any,
    self_reward_prompt_dataset: Any,
    dpo_num_train_steps: int | None = None,
    num_generated_preference_pairs: tuple[int, ...] | list[int] = (3964, 6942),
    valid_sft_dataset: Any = None,
    sft_config: dict | None = None,
    self_reward_config: dict | None = None,
) -> list:
    """Self-Rewarding LMs (Yuan et al. 2024): M1 = SFT on instruction + evaluation data, then one
    self-reward DPO iteration per entry of `num_generated_preference_pairs` (the paper's 3964 and 6942
    pairs make M2 and M3), each with the previous model as its reference.

    `sft_config` and `self_reward_config` are extra keyword arguments for those stage configs.
    """
    if len(num_generated_preference_pairs) == 0:
        raise ValueError("num_generated_preference_pairs needs one entry per self-reward iteration")
    dpo_config = dict(self_reward_config or {})
    if dpo_num_train_steps is not None:
        if "num_train_steps" in dpo_config:
            raise ValueError("give dpo_num_train_steps or self_reward_config['num_train_steps'], not both")
        dpo_config["num_train_steps"] = dpo_num_train_steps
    stages: list = [SFTConfig(train_sft_dataset, valid_dataset=valid_sft_dataset, **(sft_config or {}))]
    for num_pairs in num_generated_preference_pairs:
        stages.append(SelfRewardDPOConfig(self_reward_prompt_dataset, num_pairs, **dpo_config))
    return stages
