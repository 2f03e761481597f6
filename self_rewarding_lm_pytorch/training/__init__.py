"""The one training loop, its config and schedule, metrics, and step checkpoints with exact resume."""
