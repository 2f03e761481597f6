"""What a "model" is to the rest of the package.

Everything above `core/` sees one interface: `model(input_ids) -> logits (b, n, v)`, plus the
attributes `max_seq_len` and `num_tokens` (either may be None). An x-transformers `TransformerWrapper`
has them natively. A Hugging Face causal LM (or a `peft.PeftModel` around one) gets them from the thin
`HFCausalLM` module that `as_model` puts around it; the wrapper owns the HF-specific parts (the
generation cache, `save_pretrained` folders, the LoRA adapter switch). Nothing here imports
`transformers` or `peft` until an HF model is actually passed in.
"""

from self_rewarding_lm_pytorch.models.base import (
    AdapterOffReference,
    AdapterSnapshotReference,
    as_model,
    enable_gradient_checkpointing,
    frozen_reference,
    is_hf_model,
    is_hf_tokenizer,
    max_seq_len_of,
    model_and_tokenizer,
    num_tokens_of,
    unwrap_model,
)
from self_rewarding_lm_pytorch.models.hf import HFCausalLM

__all__ = [
    "AdapterOffReference",
    "AdapterSnapshotReference",
    "HFCausalLM",
    "as_model",
    "enable_gradient_checkpointing",
    "frozen_reference",
    "is_hf_model",
    "is_hf_tokenizer",
    "max_seq_len_of",
    "model_and_tokenizer",
    "num_tokens_of",
    "unwrap_model",
]
