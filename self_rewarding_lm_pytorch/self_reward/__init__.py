"""Self-rewarding: the judge (`RewardConfig`), pair policies, and preference generation in chunks."""
