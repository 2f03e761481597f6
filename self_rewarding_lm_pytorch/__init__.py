"""Fine-tune language models on their own judgments (self-rewarding LMs, SPIN, DPO, best-of-N, PPO)."""
