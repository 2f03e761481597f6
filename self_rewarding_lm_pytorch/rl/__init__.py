"""PPO: the trainer, the value-head model, rollouts and KL control."""
