"""Shared by the fault tests (tests/test_fault_*.py): tiny runs and weight comparisons."""

from pathlib import Path

import torch
import train_until_signalled as script
from safetensors.torch import load_file

from self_rewarding_lm_pytorch import SelfRewardingTrainer, SFTConfig, make_accelerator, train

SFT_DATA = [{"prompt": f"{a}+{a}=", "response": str(2 * a)} for a in range(8)]


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(a, b, atol=1e-5):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)


def train_script_model(run_dir, *, resume=False, task=None, config=None):
    """The signalled script's training, in this process (its SlowTask without `ready` does not sleep)."""
    model = script.make_model()
    result = train(
        model,
        task or script.SlowTask(None),
        script.make_data(),
        config or script.config(),
        accelerator=make_accelerator({"cpu": True}),
        run_dir=run_dir,
        resume=resume,
    )
    return model, result


def every_number_in(run_dir: Path) -> list[float]:
    """Every float in the run's safetensors files; JSON files are checked for NaN/Infinity tokens."""
    found = []
    for path in run_dir.rglob("*"):
        if path.suffix == ".safetensors":
            found += [float(x) for t in load_file(str(path)).values() for x in t.flatten().tolist()]
        elif path.suffix in (".json", ".jsonl"):
            text = path.read_text()
            assert "NaN" not in text and "Infinity" not in text, path
    return found


def tiny_lm():
    from x_transformers import Decoder, TransformerWrapper

    torch.manual_seed(0)
    return TransformerWrapper(num_tokens=259, max_seq_len=32, attn_layers=Decoder(dim=16, depth=1, heads=2))


def two_sft_stages():
    return [SFTConfig(SFT_DATA, num_train_steps=2, batch_size=2, checkpoint_every=1) for _ in range(2)]


def pipeline(folder, **kwargs):
    return SelfRewardingTrainer(
        tiny_lm(),
        two_sft_stages(),
        checkpoints_folder=folder,
        seed=3,
        accelerate_kwargs={"cpu": True},
        progress=False,
        **kwargs,
    )
