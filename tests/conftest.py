"""Shared test pieces: tiny models, the byte tokenizer, small record sets, weight comparison, tiers.

Test modules import the plain helpers (`from conftest import tiny_lm, assert_same_weights`) where a
module-level helper needs them, and take the fixtures (`tiny_model`, `byte_tokenizer`) as arguments.

Tiers (pyproject.toml registers them): every test carries exactly one of `unit`, `stage`, `e2e`,
`distributed`, usually as a module-level `pytestmark`. Collection fails otherwise, so
`python -m pytest -m unit` never silently skips an unmarked test.
"""

import pytest
import torch
from torch import nn

from self_rewarding_lm_pytorch import ByteTokenizer

# Tiny models are faster on one thread, and two processes share this machine's two cores.
torch.set_num_threads(1)

TIERS = ("unit", "stage", "e2e", "distributed")


def pytest_collection_modifyitems(config, items):
    wrong = []
    for item in items:
        tiers = sorted({m.name for m in item.iter_markers() if m.name in TIERS})
        if len(tiers) != 1:
            wrong.append(f"{item.nodeid}: {tiers or 'no tier'}")
    if wrong:
        raise pytest.UsageError(f"each test needs exactly one tier marker of {TIERS}:\n  " + "\n  ".join(wrong))


# --- models ---------------------------------------------------------------------------------------


def tiny_lm(
    num_tokens: int = 259, max_seq_len: int = 64, dim: int = 32, depth: int = 1, heads: int = 2, seed: int = 0, **attn
):
    """A seeded x-transformers decoder; 259 ids is the ByteTokenizer's vocabulary (256 bytes, pad, bos, eos)."""
    from x_transformers import Decoder, TransformerWrapper

    torch.manual_seed(seed)
    layers = Decoder(dim=dim, depth=depth, heads=heads, **attn)
    return TransformerWrapper(num_tokens=num_tokens, max_seq_len=max_seq_len, attn_layers=layers)


@pytest.fixture
def tiny_model():
    """A tiny decoder over the ByteTokenizer's 259 ids, seeded."""
    return tiny_lm()


@pytest.fixture
def byte_tokenizer():
    return ByteTokenizer()


# --- records --------------------------------------------------------------------------------------


def letter_preferences(n: int = 16) -> list[dict]:
    """A learnable preference set: the chosen answer repeats the prompt's letter, the rejected one does not."""
    letters = "abcdefghijklmnop"
    return [
        {
            "prompt": f"{letters[i % 16]}?",
            "chosen": letters[i % 16] * 3,
            "rejected": letters[(i + 5) % 16] * (2 + i % 3),
        }
        for i in range(n)
    ]


def upper_case_sft(prompts=("ab", "cd", "ef", "gh", "ij", "kl")) -> list[dict]:
    """SFT records whose response is the prompt in capitals."""
    return [{"prompt": p, "response": p.upper()} for p in prompts]


# --- weights --------------------------------------------------------------------------------------


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of the state dict, to compare against later."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(a, b, atol: float = 1e-5):
    """Two state dicts (or models) hold the same tensors, to `atol` (0: bitwise)."""
    a = a.state_dict() if isinstance(a, nn.Module) else a
    b = b.state_dict() if isinstance(b, nn.Module) else b
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)


def params_equal(a: nn.Module, b: nn.Module) -> bool:
    """Every parameter bitwise equal (same architecture)."""
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def unchanged_parameters(before: dict[str, torch.Tensor], model: nn.Module) -> list[str]:
    """Names of the parameters of `model` still bitwise equal to their copy in `before` (from `weights`)."""
    return [name for name, p in model.named_parameters() if torch.equal(p.detach(), before[name])]
