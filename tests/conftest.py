import pytest
import torch

# Tiny models are faster on one thread, and two processes share this machine's two cores.
torch.set_num_threads(1)


@pytest.fixture
def tiny_model():
    """A tiny decoder over the ByteTokenizer's 259 ids, seeded."""
    from x_transformers import Decoder, TransformerWrapper

    torch.manual_seed(0)
    return TransformerWrapper(num_tokens=259, max_seq_len=64, attn_layers=Decoder(dim=32, depth=1, heads=2))
