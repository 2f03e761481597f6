"""Hugging Face sampling: our `sample` (the model's own KV cache, counter-based seeded draws) vs
`model.generate` on the same tiny random-initialised Llama, batch 32 x 128 new tokens.

    python bench/hf_sampling.py             # 5 interleaved repeats, prints the table
    python bench/hf_sampling.py --repeats 2

Both run greedy (identical tokens, checked) and sampled (temperature 1, top-p 0.9; tokens differ by
construction: different random streams). EOS is disabled for both so every row decodes all 128
tokens. Runs alternate round-robin and the median is reported; the ratio is generate's time over ours
(>= 1.0 means ours is at least as fast). Nothing is downloaded: the model is built from a config.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from self_rewarding_lm_pytorch import sample

BATCH, NEW, PROMPT_LEN, VOCAB = 32, 128, 16, 512


def build():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


def ours(model, prompts, greedy: bool):
    kwargs = dict(temperature=0) if greedy else dict(temperature=1.0, top_p=0.9)
    out = sample(model, list(prompts), max_new_tokens=NEW, generator=torch.Generator().manual_seed(0), **kwargs)
    return out.response_ids


def theirs(model, prompts, greedy: bool):
    kwargs = dict(do_sample=False) if greedy else dict(do_sample=True, temperature=1.0, top_p=0.9, top_k=0)
    with torch.inference_mode():
        out = model.generate(
            prompts, max_new_tokens=NEW, min_new_tokens=NEW, eos_token_id=None, pad_token_id=0, **kwargs
        )
    return out[:, PROMPT_LEN:]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = build()
    prompts = torch.randint(VOCAB, (BATCH, PROMPT_LEN), generator=torch.Generator().manual_seed(1))
    assert torch.equal(ours(model, prompts, True), theirs(model, prompts, True)), "greedy outputs differ"
    times = {(who, mode): [] for who in ("ours", "generate") for mode in ("greedy", "sampled")}
    for _ in range(args.repeats):
        for (who, mode), bucket in times.items():
            fn = ours if who == "ours" else theirs
            start = time.perf_counter()
            fn(model, prompts, mode == "greedy")
            bucket.append(time.perf_counter() - start)
    print(f"batch {BATCH} x {NEW} new tokens, prompt {PROMPT_LEN}, Llama 2 layers d128 GQA 4/2, torch threads 1")
    print("| mode | ours (s) | generate (s) | ours tokens/s | speed-up (generate / ours) |")
    print("|---|---|---|---|---|")
    for mode in ("greedy", "sampled"):
        a, b = statistics.median(times[("ours", mode)]), statistics.median(times[("generate", mode)])
        print(f"| {mode} | {a:.2f} | {b:.2f} | {BATCH * NEW / a:.0f} | {b / a:.2f}x |")


if __name__ == "__main__":
    main()
