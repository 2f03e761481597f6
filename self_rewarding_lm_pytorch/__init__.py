"""Fine-tune language models on their own judgments: self-rewarding DPO, SPIN, external-reward DPO,
SFT, best-of-N, ranked-list reward models and PPO, as stages you can interleave in any order.

The public API is re-exported here. Names resolve on first use (PEP 562), so `import
self_rewarding_lm_pytorch` stays cheap and a script pays only for what it touches.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    # the pipeline and its stages
    "SelfRewardingTrainer": "pipeline",
    "RunMismatchError": "pipeline",
    "create_default_paper_config": "recipes",
    "SFTConfig": "stages.sft",
    "SelfPlayConfig": "stages.spin",
    "SelfRewardDPOConfig": "stages.self_reward_dpo",
    "ExternalRewardDPOConfig": "stages.external_reward_dpo",
    "PPOStageConfig": "stages.ppo",
    "STAGE_KINDS": "stages.registry",
    "StageContext": "stages.context",
    "StageEnd": "stages.context",
    # trainers usable on their own
    "SFTTrainer": "trainers.sft",
    "DPOTrainer": "trainers.dpo",
    "SPINTrainer": "trainers.spin",
    "PPOTrainer": "rl.ppo",
    "PPOConfig": "rl.ppo",
    "ValueHeadModel": "rl.value_head",
    "RewardModel": "trainers.reward_model",
    "RewardModelTrainer": "trainers.reward_model",
    "TrainConfig": "training.loop",
    "TrainResult": "training.loop",
    "train": "training.loop",
    "make_accelerator": "training.loop",
    "train_sft": "trainers.sft",
    "train_dpo": "trainers.dpo",
    "train_spin_iteration": "trainers.spin",
    # the judge and preference pairs
    "RewardConfig": "self_reward.judge",
    "DEFAULT_REWARD_CONFIG": "self_reward.judge",
    "judge_scores": "self_reward.judge",
    "generate_preferences": "self_reward.preferences",
    "BudgetError": "self_reward.preferences",
    "best_vs_worst": "self_reward.pairs",
    "length_controlled": "self_reward.pairs",
    "make_pair_policy": "self_reward.pairs",
    # sampling, best-of-N, synthetic data
    "sample": "core.sampling",
    "SampleOutput": "core.sampling",
    "BestOfNSampler": "generation.best_of_n",
    "LengthSampler": "generation.best_of_n",
    "GenerationConfig": "generation.best_of_n",
    "generate_synthetic_dataset": "generation.synthetic",
    "PerplexityScorer": "generation.synthetic",
    # pure math
    "sequence_logprobs": "core.logprobs",
    "sft_loss": "core.losses",
    "dpo_loss": "core.losses",
    "spin_loss": "core.losses",
    "ranking_loss": "core.losses",
    # tokenizers and data
    "Tokenizer": "core.tokenizer",
    "ByteTokenizer": "core.tokenizer",
    "CallableTokenizer": "core.tokenizer",
    "create_mock_dataset": "core.batching",
    "save_model": "training.checkpoint",
    "load_model": "training.checkpoint",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # resolve once
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
