"""The seed README's SPIN example with a tiny model:   python examples/readme_spin.py"""

import tempfile

import torch
from x_transformers import Decoder, TransformerWrapper

from self_rewarding_lm_pytorch import SPINTrainer, create_mock_dataset

torch.manual_seed(0)

transformer = TransformerWrapper(num_tokens=256, max_seq_len=64, attn_layers=Decoder(dim=16, depth=1, heads=2))

sft_dataset = create_mock_dataset(16, lambda: (torch.randint(0, 256, (32,)), torch.tensor(1)))

if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as folder:
        spin_trainer = SPINTrainer(
            transformer,
            max_seq_len=16,
            train_sft_dataset=sft_dataset,
            checkpoint_every=100,
            spin_kwargs=dict(λ=0.1),
            num_train_steps=2,
            batch_size=4,
            checkpoint_folder=folder,
        )
        spin_trainer()
        print("SPIN done")
