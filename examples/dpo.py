"""DPO on (prompt, chosen, rejected) records with a tiny model.

python examples/dpo.py
"""

import tempfile

import torch
from x_transformers import Decoder, TransformerWrapper

from self_rewarding_lm_pytorch import DPOTrainer

torch.manual_seed(0)
model = TransformerWrapper(num_tokens=259, max_seq_len=64, attn_layers=Decoder(dim=32, depth=1, heads=2))

records = [
    {"prompt": "2+2=", "chosen": "4", "rejected": "5"},
    ("Capital of France? ", "Paris", "Rome"),
]

with tempfile.TemporaryDirectory() as folder:  # metrics, checkpoints and the reference log-probs go here
    trainer = DPOTrainer(
        model,
        records,
        beta=0.1,
        checkpoint_folder=folder,
        num_train_steps=10,
        batch_size=2,
        learning_rate=1e-5,
        log_every=5,
    )
    result = trainer()  # trains `model` in place; result.history holds the logged metrics
margins = [r["rewards/margins"] for r in result.history]  # logged every 5 steps
print("margins rise:", margins[-1] > margins[0])
