"""Run in its own process (accelerate's mixed-precision setting is process-wide): SFT and DPO under
bf16 autocast on CPU for a Hugging Face model and an x-transformers model; prints one JSON line.

    python precision_check.py MODEL_FOLDER
"""

from __future__ import annotations

import json
import math
import sys

import torch

from self_rewarding_lm_pytorch import DPOTrainer, SFTTrainer, sequence_logprobs
from self_rewarding_lm_pytorch.training.accelerators import make_accelerator

SFT = [{"prompt": "say hello", "response": "hello!"}, {"prompt": "the cat", "response": "sat."}] * 2
PAIRS = [{"prompt": "say hello", "chosen": "hello!", "rejected": "no."}] * 4


def run(model, tokenizer, accelerate_kwargs) -> dict:
    before = {k: v.clone() for k, v in model.state_dict().items()}
    common = dict(tokenizer=tokenizer, accelerate_kwargs=accelerate_kwargs, num_train_steps=2, batch_size=2)
    sft = SFTTrainer(model, SFT, progress=False, log_every=1, **common)()
    dpo = DPOTrainer(model, PAIRS, progress=False, log_every=1, **common)()
    accelerator = make_accelerator(accelerate_kwargs)
    ids = torch.randint(0, 200, (2, 6))
    is_response = torch.zeros(2, 6, dtype=torch.bool)
    is_response[:, 3:] = True
    with accelerator.autocast():
        logits = sft_model_logits(model, ids)
        logps = sequence_logprobs(logits, ids, is_response)
    changed = any(not torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    losses = [r["loss"] for r in sft.history + dpo.history if "loss" in r]
    return {
        "logits_dtype": str(logits.dtype),
        "logprobs_dtype": str(logps.dtype),
        "finite": all(math.isfinite(x) for x in losses) and bool(torch.isfinite(logps).all()),
        "changed": changed,
    }


def sft_model_logits(model, ids):
    from self_rewarding_lm_pytorch.models import as_model

    return as_model(model)(ids)


def main(folder: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from x_transformers import Decoder, TransformerWrapper

    from self_rewarding_lm_pytorch import ByteTokenizer

    torch.set_num_threads(1)
    torch.manual_seed(0)
    kwargs = dict(cpu=True, mixed_precision="bf16")
    hf = run(AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder), kwargs)
    xt_model = TransformerWrapper(num_tokens=259, max_seq_len=64, attn_layers=Decoder(dim=16, depth=1, heads=2))
    xt = run(xt_model, ByteTokenizer(), kwargs)
    print(json.dumps({"hf": hf, "xtransformers": xt}))


if __name__ == "__main__":
    main(sys.argv[1])
