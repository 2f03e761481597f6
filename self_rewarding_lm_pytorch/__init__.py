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
    "SFTConfig": "stages.supervised",
    "SelfPlayConfig": "stages.supervised",
    "SelfRewardDPOConfig": "stages.preference_dpo",
    "ExternalRewardDPOConfig": "stages.preference_dpo",
    "PPOStageConfig": "stages.ppo",
    "STAGE_KINDS": "stages.registry",
    "StageContext": "stages.base",
    "StageEnd": "stages.base",
    # trainers usable on their own
    "SFTTrainer": "stages.sft",
    "DPOTrainer": "stages.dpo",
    "SPINTrainer": "stages.spin",
    "PPOTrainer": "ppo",
    "PPOConfig": "ppo",
    "ValueHeadModel": "ppo_model",
    "RewardModel": "reward_model",
    "RewardModelTrainer": "reward_model",
    "TrainConfig": "loop",
    "TrainResult": "loop",
    "train": "loop",
    "make_accelerator": "loop",
    "train_sft": "stages.sft",
    "train_dpo": "stages.dpo",
    "train_spin_iteration": "stages.spin",
    # the judge and preference pairs
    "RewardConfig": "judge",
    "DEFAULT_REWARD_CONFIG": "judge",
    "judge_scores": "judge",
    "generate_preferences": "preferences",
    "BudgetError": "preferences",
    "best_vs_worst": "pairs",
    "length_controlled": "pairs",
    "make_pair_policy": "pairs",
    # sampling, best-of-N, synthetic data
    "sample": "sampling",
    "SampleOutput": "sampling",
    "BestOfNSampler": "best_of_n",
    "LengthSampler": "best_of_n",
    "GenerationConfig": "best_of_n",
    "generate_synthetic_dataset": "synthetic",
    "PerplexityScorer": "synthetic",
    # pure math
    "sequence_logprobs": "logprobs",
    "sft_loss": "losses",
    "dpo_loss": "losses",
    "spin_loss": "losses",
    "ranking_loss": "losses",
    # tokenizers and data
    "Tokenizer": "tokenizer",
    "ByteTokenizer": "tokenizer",
    "CallableTokenizer": "tokenizer",
    "create_mock_dataset": "data",
    "save_model": "checkpoint",
    "load_model": "checkpoint",
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
