"""Data from a model's own samples: the best-of-N sampler and best-of-N synthetic datasets."""
