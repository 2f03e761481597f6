"""Batched sampling with a KV cache: 4 samples for each of 2 prompts.

python examples/sampling.py
"""

import torch
from x_transformers import Decoder, TransformerWrapper

from self_rewarding_lm_pytorch import ByteTokenizer, sample

tokenizer = ByteTokenizer()
model = TransformerWrapper(
    num_tokens=tokenizer.vocab_size, max_seq_len=256, attn_layers=Decoder(dim=64, depth=2, heads=4, rotary_pos_emb=True)
)

prompts = [torch.tensor(tokenizer.encode(p)) for p in ["What is 2 + 2?", "Name a colour."]]
out = sample(
    model,
    prompts,
    max_new_tokens=16,
    num_samples=4,
    temperature=0.7,
    top_p=0.9,
    eos_id=tokenizer.eos_id,
    pad_id=tokenizer.pad_id,
    generator=torch.Generator().manual_seed(0),
    return_logprobs=True,
)

texts = out.texts(tokenizer)  # 8 strings: the 4 samples of prompt 0, then the 4 of prompt 1
ids = out.response_ids  # (8, m) generated tokens only, pad_id after each row's end
mask = out.response_mask  # (8, m) True for generated tokens, including the EOS token itself
logprobs = out.logprobs  # (8, m) log p(token) under the raw model (temperature 1, no filtering), 0 where masked
print(out.backend, out.prompt_index.tolist())  # [0, 0, 0, 0, 1, 1, 1, 1]
