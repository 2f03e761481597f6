"""Fine-tune language models on their own judgments: self-rewarding DPO, SPIN, external-reward DPO,
SFT, best-of-N, ranked-list reward models and PPO, as stages you can interleave in any order.

The public API is re-exported here. Names resolve on first use (PEP 562), so `import
self_rewarding_lm_pytorch` stays cheap and a script pays only for what it touches.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# What IDEs and type checkers see (`X as X` marks an explicit re-export); at run time the names
# resolve lazily through __getattr__ below. tests/test_repo.py keeps this block and _EXPORTS in step.
if TYPE_CHECKING:
    from self_rewarding_lm_pytorch.config_values import ConfigError as ConfigError
    from self_rewarding_lm_pytorch.core.batching import create_mock_dataset as create_mock_dataset
    from self_rewarding_lm_pytorch.core.field_types import FieldTypeError as FieldTypeError
    from self_rewarding_lm_pytorch.core.logprobs import sequence_logprobs as sequence_logprobs
    from self_rewarding_lm_pytorch.core.losses import DPO_LOSS_TYPES as DPO_LOSS_TYPES
    from self_rewarding_lm_pytorch.core.losses import dpo_loss as dpo_loss
    from self_rewarding_lm_pytorch.core.losses import ranking_loss as ranking_loss
    from self_rewarding_lm_pytorch.core.losses import sft_loss as sft_loss
    from self_rewarding_lm_pytorch.core.losses import spin_loss as spin_loss
    from self_rewarding_lm_pytorch.core.reward_source import SELF_JUDGE as SELF_JUDGE
    from self_rewarding_lm_pytorch.core.reward_source import scoring_fn as scoring_fn
    from self_rewarding_lm_pytorch.core.run_lock import RunLockedError as RunLockedError
    from self_rewarding_lm_pytorch.core.sampling import SampleOutput as SampleOutput
    from self_rewarding_lm_pytorch.core.sampling import sample as sample
    from self_rewarding_lm_pytorch.core.sampling_config import JudgeSettings as JudgeSettings
    from self_rewarding_lm_pytorch.core.sampling_config import SamplingConfig as SamplingConfig
    from self_rewarding_lm_pytorch.core.sampling_config import SamplingConflictError as SamplingConflictError
    from self_rewarding_lm_pytorch.core.tokenizer import ByteTokenizer as ByteTokenizer
    from self_rewarding_lm_pytorch.core.tokenizer import CallableTokenizer as CallableTokenizer
    from self_rewarding_lm_pytorch.core.tokenizer import Tokenizer as Tokenizer
    from self_rewarding_lm_pytorch.generation.best_of_n import BestOfNSampler as BestOfNSampler
    from self_rewarding_lm_pytorch.generation.best_of_n import GenerationConfig as GenerationConfig
    from self_rewarding_lm_pytorch.generation.best_of_n import LengthSampler as LengthSampler
    from self_rewarding_lm_pytorch.generation.synthetic import PerplexityScorer as PerplexityScorer
    from self_rewarding_lm_pytorch.generation.synthetic import generate_synthetic_dataset as generate_synthetic_dataset
    from self_rewarding_lm_pytorch.pipeline import RunMismatchError as RunMismatchError
    from self_rewarding_lm_pytorch.pipeline import SelfRewardingTrainer as SelfRewardingTrainer
    from self_rewarding_lm_pytorch.recipes import create_default_paper_config as create_default_paper_config
    from self_rewarding_lm_pytorch.rl.ppo import PPOConfig as PPOConfig
    from self_rewarding_lm_pytorch.rl.ppo import PPOTrainer as PPOTrainer
    from self_rewarding_lm_pytorch.rl.ppo import UnsupportedSamplingError as UnsupportedSamplingError
    from self_rewarding_lm_pytorch.rl.value_head import ValueHeadModel as ValueHeadModel
    from self_rewarding_lm_pytorch.self_reward.budgets import BudgetError as BudgetError
    from self_rewarding_lm_pytorch.self_reward.consistency import SelfConsistencyReward as SelfConsistencyReward
    from self_rewarding_lm_pytorch.self_reward.consistency import consistency_scores as consistency_scores
    from self_rewarding_lm_pytorch.self_reward.consistency import make_answer_extractor as make_answer_extractor
    from self_rewarding_lm_pytorch.self_reward.judge import judge_scores as judge_scores
    from self_rewarding_lm_pytorch.self_reward.pairs import best_vs_worst as best_vs_worst
    from self_rewarding_lm_pytorch.self_reward.pairs import length_controlled as length_controlled
    from self_rewarding_lm_pytorch.self_reward.pairs import make_pair_policy as make_pair_policy
    from self_rewarding_lm_pytorch.self_reward.preferences import generate_preferences as generate_preferences
    from self_rewarding_lm_pytorch.self_reward.prompt_filters import PromptFilter as PromptFilter
    from self_rewarding_lm_pytorch.self_reward.prompt_filters import ngram_overlap as ngram_overlap
    from self_rewarding_lm_pytorch.self_reward.prompt_generation import generate_prompts as generate_prompts
    from self_rewarding_lm_pytorch.self_reward.prompt_generation import render_few_shot as render_few_shot
    from self_rewarding_lm_pytorch.self_reward.reward_config import DEFAULT_REWARD_CONFIG as DEFAULT_REWARD_CONFIG
    from self_rewarding_lm_pytorch.self_reward.reward_config import RewardConfig as RewardConfig
    from self_rewarding_lm_pytorch.self_reward.reward_config import RewardTemplateError as RewardTemplateError
    from self_rewarding_lm_pytorch.stages.context import StageContext as StageContext
    from self_rewarding_lm_pytorch.stages.context import StageEnd as StageEnd
    from self_rewarding_lm_pytorch.stages.external_reward_dpo import ExternalRewardDPOConfig as ExternalRewardDPOConfig
    from self_rewarding_lm_pytorch.stages.ppo import PPOStageConfig as PPOStageConfig
    from self_rewarding_lm_pytorch.stages.prompt_generation import PromptGenerationConfig as PromptGenerationConfig
    from self_rewarding_lm_pytorch.stages.registry import STAGE_KINDS as STAGE_KINDS
    from self_rewarding_lm_pytorch.stages.self_reward_dpo import SelfRewardDPOConfig as SelfRewardDPOConfig
    from self_rewarding_lm_pytorch.stages.sft import SFTConfig as SFTConfig
    from self_rewarding_lm_pytorch.stages.spin import SelfPlayConfig as SelfPlayConfig
    from self_rewarding_lm_pytorch.trainers.dpo import DPOTrainer as DPOTrainer
    from self_rewarding_lm_pytorch.trainers.dpo import train_dpo as train_dpo
    from self_rewarding_lm_pytorch.trainers.pair_training import (
        UnshardableReferenceError as UnshardableReferenceError,
    )
    from self_rewarding_lm_pytorch.trainers.preference_loss import PreferenceLoss as PreferenceLoss
    from self_rewarding_lm_pytorch.trainers.reward_model import RewardModel as RewardModel
    from self_rewarding_lm_pytorch.trainers.reward_model import RewardModelTrainer as RewardModelTrainer
    from self_rewarding_lm_pytorch.trainers.sft import SFTTrainer as SFTTrainer
    from self_rewarding_lm_pytorch.trainers.sft import train_sft as train_sft
    from self_rewarding_lm_pytorch.trainers.spin import SPINTrainer as SPINTrainer
    from self_rewarding_lm_pytorch.trainers.spin import train_spin_iteration as train_spin_iteration
    from self_rewarding_lm_pytorch.training.accelerators import LaunchMismatchError as LaunchMismatchError
    from self_rewarding_lm_pytorch.training.accelerators import make_accelerator as make_accelerator
    from self_rewarding_lm_pytorch.training.checkpoint import load_model as load_model
    from self_rewarding_lm_pytorch.training.checkpoint import save_model as save_model
    from self_rewarding_lm_pytorch.training.faults import NonFiniteLossError as NonFiniteLossError
    from self_rewarding_lm_pytorch.training.faults import TrainingStopped as TrainingStopped
    from self_rewarding_lm_pytorch.training.loop import TrainConfig as TrainConfig
    from self_rewarding_lm_pytorch.training.loop import TrainResult as TrainResult
    from self_rewarding_lm_pytorch.training.loop import train as train

_EXPORTS = {
    # the pipeline and its stages
    "SelfRewardingTrainer": "pipeline",
    "RunMismatchError": "pipeline",
    "RunLockedError": "core.run_lock",
    "create_default_paper_config": "recipes",
    "SFTConfig": "stages.sft",
    "SelfPlayConfig": "stages.spin",
    "SelfRewardDPOConfig": "stages.self_reward_dpo",
    "ExternalRewardDPOConfig": "stages.external_reward_dpo",
    "PPOStageConfig": "stages.ppo",
    "PromptGenerationConfig": "stages.prompt_generation",
    "STAGE_KINDS": "stages.registry",
    "StageContext": "stages.context",
    "StageEnd": "stages.context",
    # trainers usable on their own
    "SFTTrainer": "trainers.sft",
    "DPOTrainer": "trainers.dpo",
    "UnshardableReferenceError": "trainers.pair_training",
    "PreferenceLoss": "trainers.preference_loss",
    "SPINTrainer": "trainers.spin",
    "PPOTrainer": "rl.ppo",
    "PPOConfig": "rl.ppo",
    "UnsupportedSamplingError": "rl.ppo",
    "ValueHeadModel": "rl.value_head",
    "RewardModel": "trainers.reward_model",
    "RewardModelTrainer": "trainers.reward_model",
    "TrainConfig": "training.loop",
    "TrainResult": "training.loop",
    "train": "training.loop",
    "make_accelerator": "training.accelerators",
    "LaunchMismatchError": "training.accelerators",
    "NonFiniteLossError": "training.faults",
    "TrainingStopped": "training.faults",
    "train_sft": "trainers.sft",
    "train_dpo": "trainers.dpo",
    "train_spin_iteration": "trainers.spin",
    # the judge and preference pairs
    "RewardConfig": "self_reward.reward_config",
    "RewardTemplateError": "self_reward.reward_config",
    "DEFAULT_REWARD_CONFIG": "self_reward.reward_config",
    "judge_scores": "self_reward.judge",
    "generate_preferences": "self_reward.preferences",
    "BudgetError": "self_reward.budgets",
    "best_vs_worst": "self_reward.pairs",
    "length_controlled": "self_reward.pairs",
    "make_pair_policy": "self_reward.pairs",
    "SelfConsistencyReward": "self_reward.consistency",
    "consistency_scores": "self_reward.consistency",
    "make_answer_extractor": "self_reward.consistency",
    "generate_prompts": "self_reward.prompt_generation",
    "render_few_shot": "self_reward.prompt_generation",
    "PromptFilter": "self_reward.prompt_filters",
    "ngram_overlap": "self_reward.prompt_filters",
    # sampling, best-of-N, synthetic data
    "sample": "core.sampling",
    "SamplingConfig": "core.sampling_config",
    "JudgeSettings": "core.sampling_config",
    "SamplingConflictError": "core.sampling_config",
    "FieldTypeError": "core.field_types",
    "SELF_JUDGE": "core.reward_source",
    "scoring_fn": "core.reward_source",
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
    "DPO_LOSS_TYPES": "core.losses",
    "spin_loss": "core.losses",
    "ranking_loss": "core.losses",
    # tokenizers and data
    "Tokenizer": "core.tokenizer",
    "ByteTokenizer": "core.tokenizer",
    "CallableTokenizer": "core.tokenizer",
    "create_mock_dataset": "core.batching",
    "ConfigError": "config_values",
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
