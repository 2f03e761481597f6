"""The one implementation of each algorithm: SFT, DPO, SPIN and the ranked-list reward model."""
