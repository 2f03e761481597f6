"""The built-in demo: a verifiable task (addition), its seed data, evaluation, report, and `run_demo`."""

from self_rewarding_lm_pytorch.demo.task import AdditionTask, demo_reward_config, is_correct, verifier_reward

__all__ = ["AdditionTask", "demo_reward_config", "is_correct", "verifier_reward"]
