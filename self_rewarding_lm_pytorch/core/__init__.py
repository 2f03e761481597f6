"""The foundation: tokenizers, the one log-prob shift, pure losses, sampling and the KV decoders,
atomic files and batching. Imports nothing else from the package."""
