"""One PPO step under mixed_precision="bf16" on CPU (its own process: accelerate keeps one precision per
process). Prints a JSON line: the step-0 KL, and the dtypes the policy's logits had while sampling."""

import json
import sys

import torch
from x_transformers import Decoder, TransformerWrapper

from self_rewarding_lm_pytorch.core.tokenizer import CallableTokenizer
from self_rewarding_lm_pytorch.rl.ppo import PPOConfig, PPOTrainer
from self_rewarding_lm_pytorch.training.accelerators import make_accelerator

torch.set_num_threads(1)
# no argument: PPOConfig's default temperature
temperature = {"temperature": float(sys.argv[1])} if len(sys.argv) > 1 else {}
torch.manual_seed(0)
model = TransformerWrapper(num_tokens=6, max_seq_len=16, attn_layers=Decoder(dim=16, depth=1, heads=2))
tokenizer = CallableTokenizer(lambda s: [int(c) for c in s], lambda ids: "", pad_id=0, eos_id=None)
accelerator = make_accelerator(dict(cpu=True, mixed_precision="bf16"))
trainer = PPOTrainer(
    model,
    config=PPOConfig(batch_size=4, mini_batch_size=4, ppo_epochs=1, **temperature),
    tokenizer=tokenizer,
    accelerator=accelerator,
)
sampled_dtypes = set()
hook = model.to_logits.register_forward_hook(lambda m, i, out: sampled_dtypes.add(str(out.dtype)))
queries = [torch.tensor([1 + i % 2]) for i in range(4)]
responses = trainer.generate(queries, max_new_tokens=6)
hook.remove()
stats = trainer.step(queries, responses, [1.0, 0.0, 0.5, 0.25])
print(json.dumps({"kl": stats["objective/kl"], "sampled_dtypes": sorted(sampled_dtypes)}))
