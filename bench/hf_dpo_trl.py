"""A DPO step on a tiny GPT-2: our DPOTrainer vs TRL's DPOTrainer, same model, data and settings.

    pip install trl          # for this benchmark only; not a dependency of the package
    python bench/hf_dpo_trl.py

Settings for both: fp32 on CPU, no gradient checkpointing, batch 8, lr 1e-4, beta 0.1, sigmoid loss,
reference log-probs precomputed once (both support it), 64 pairs, 1 torch thread. Per-step time is
(time for 24 steps - time for 8 steps) / 16, so setup and the reference pass cancel out. Each trainer
runs in turn, three rounds, and the median per-step time is reported; the ratio is ours / TRL's
(target <= 0.9). Nothing is downloaded: the tokenizer is trained here and the model built from a config.
"""

from __future__ import annotations

import os
import random
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

BATCH, LR, BETA, STEPS = 8, 1e-4, 0.1, (8, 24)


def tokenizer_and_data():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    rng = random.Random(0)
    words = ["the", "a", "cat", "dog", "sat", "ran", "on", "under", "mat", "log", "big", "small", "red", "blue"]
    text = lambda n: " ".join(rng.choice(words) for _ in range(n))  # noqa: E731
    pairs = [{"prompt": text(8), "chosen": text(12), "rejected": text(12)} for _ in range(64)]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer, bpe.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    corpus = [p[k] for p in pairs for k in ("prompt", "chosen", "rejected")]
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"]))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    return tok, pairs


def model(tok):
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tok), n_embd=128, n_layer=2, n_head=4, n_positions=128,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, eos_token_id=tok.eos_token_id)  # fmt: skip
    return GPT2LMHeadModel(config)


def ours(tok, pairs, steps) -> float:
    from self_rewarding_lm_pytorch import DPOTrainer

    trainer = DPOTrainer(
        model(tok), pairs, tokenizer=tok, beta=BETA, learning_rate=LR, batch_size=BATCH, num_train_steps=steps,
        progress=False, log_every=1000, accelerate_kwargs=dict(cpu=True),
    )  # fmt: skip
    start = time.perf_counter()
    trainer()
    return time.perf_counter() - start


def trl(tok, pairs, steps) -> float:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    with tempfile.TemporaryDirectory() as out:
        args = DPOConfig(
            output_dir=out, use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False, beta=BETA,
            learning_rate=LR, per_device_train_batch_size=BATCH, max_steps=steps, precompute_ref_log_probs=True,
            report_to=[], logging_steps=1000, save_strategy="no", max_length=128, lr_scheduler_type="constant",
            warmup_steps=0, dataloader_num_workers=0, disable_tqdm=True,
        )  # fmt: skip
        trainer = DPOTrainer(model=model(tok), args=args, train_dataset=Dataset.from_list(pairs), processing_class=tok)
        start = time.perf_counter()
        trainer.train()
        return time.perf_counter() - start


def main():
    torch.set_num_threads(1)
    tok, pairs = tokenizer_and_data()
    per_step = {"ours": [], "trl": []}
    for _ in range(3):
        for name, fn in (("ours", ours), ("trl", trl)):
            short, long = fn(tok, pairs, STEPS[0]), fn(tok, pairs, STEPS[1])
            per_step[name].append((long - short) / (STEPS[1] - STEPS[0]))
    a, b = statistics.median(per_step["ours"]), statistics.median(per_step["trl"])
    print("GPT-2 2 layers d128, 64 pairs, batch 8, fp32 CPU, 1 thread, precomputed reference")
    print("| trainer | seconds per DPO step (median of 3) |")
    print("|---|---|")
    print(f"| ours | {a * 1000:.1f} ms |")
    print(f"| TRL DPOTrainer | {b * 1000:.1f} ms |")
    print(f"ratio ours / TRL: {a / b:.2f}")


if __name__ == "__main__":
    main()
