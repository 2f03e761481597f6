"""Best-of-N throughput: one batched call for all queries vs generating query by query.

    python bench/best_of_n.py            # 32 queries x N=8, writes bench/results/best_of_n.md
    python bench/best_of_n.py --quick    # 8 queries, one repeat, no file

Contenders, each generating N candidates per query and scoring them with the same reward model:
- batched: `BestOfNSampler.generate(all queries)`: one sampler call (each prompt encoded once,
  N samples from its cache) and one batched reward-model call.
- batched, cache expanded: one sampler call on every query repeated N times (one row per sample,
  so each row holds its own copy of the prompt's cache), then one reward-model call: what the
  batched sampler did before prompts shared their cache.
- per-query (TRL's shape): for each query, one sampler call on the query repeated N times, then
  one reward-model call on its N texts.
- per-sample: for each query and each sample, one sampler call and one reward-model call.
All use the same KV-cached sampler and the same settings; only the batching differs. The
contenders run interleaved over repeats and the median is reported (the machine is shared).
Throughput is candidates generated and scored per second.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from x_transformers import Decoder, TransformerWrapper

from self_rewarding_lm_pytorch.core.files import atomic_write_text
from self_rewarding_lm_pytorch.core.sampling import sample
from self_rewarding_lm_pytorch.core.tokenizer import ByteTokenizer
from self_rewarding_lm_pytorch.generation.best_of_n import BestOfNSampler, GenerationConfig, rank_candidates
from self_rewarding_lm_pytorch.trainers.reward_model import RewardModel

TOK = ByteTokenizer()


def build(dim: int, depth: int):
    torch.manual_seed(0)
    policy = TransformerWrapper(
        num_tokens=259, max_seq_len=256, attn_layers=Decoder(dim=dim, depth=depth, heads=4)
    ).eval()
    rm = RewardModel(num_tokens=259, max_seq_len=256, dim=64, depth=1, heads=4).eval()
    return policy, rm


def make_queries(count: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    words = ["the", "cat", "sat", "on", "a", "mat", "why", "is", "sky", "blue", "tell", "me", "about", "tea"]
    out = []
    for _ in range(count):
        n = int(torch.randint(3, 8, (1,), generator=g))
        text = " ".join(words[int(i)] for i in torch.randint(len(words), (n,), generator=g)) + ":"
        out.append(torch.tensor(TOK.encode(text)))
    return out


def contenders(policy, rm, queries, n: int, cfg: GenerationConfig):
    kw = dict(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, eos_id=TOK.eos_id, pad_id=TOK.pad_id)

    def batched():
        return BestOfNSampler(policy, TOK, rm, sample_size=n, generation_config=cfg, seed=0).generate(queries)

    def per_query():
        g, best = torch.Generator().manual_seed(0), []
        for q in queries:
            texts = sample(policy, [q] * n, generator=g, **kw).texts(TOK)
            scores = rm.score([TOK.decode(q)] * n, texts)
            best.append(texts[int(rank_candidates(scores[None], 1)[0])])
        return best

    def per_sample():
        g, best = torch.Generator().manual_seed(0), []
        for q in queries:
            texts = [sample(policy, [q], generator=g, **kw).texts(TOK)[0] for _ in range(n)]
            scores = torch.cat([rm.score([TOK.decode(q)], [t]) for t in texts])
            best.append(texts[int(rank_candidates(scores[None], 1)[0])])
        return best

    def expanded():
        g = torch.Generator().manual_seed(0)
        texts = sample(policy, [q for q in queries for _ in range(n)], generator=g, **kw).texts(TOK)
        scores = rm.score([TOK.decode(q) for q in queries for _ in range(n)], texts).view(len(queries), n)
        return [texts[i * n + int(j)] for i, j in enumerate(rank_candidates(scores, 1)[0][:, 0])]

    return {
        "batched (BestOfNSampler)": batched,
        "batched, cache expanded": expanded,
        "per-query (TRL-style)": per_query,
        "per-sample": per_sample,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--queries", type=int, default=32)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="bench/results/best_of_n.md")
    args = ap.parse_args()
    if args.quick:
        args.queries, args.repeats = 8, 1
    torch.set_num_threads(args.threads)
    policy, rm = build(args.dim, args.depth)
    queries = make_queries(args.queries)
    cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=1.0)
    runs = contenders(policy, rm, queries, args.n, cfg)
    BestOfNSampler(policy, TOK, rm, sample_size=2, generation_config=cfg).generate(queries[:2])  # warm-up
    times = {name: [] for name in runs}
    load_before = os.getloadavg()
    for _ in range(args.repeats):  # interleaved: load spikes hit every contender alike
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    candidates = args.queries * args.n
    base = statistics.median(times["batched (BestOfNSampler)"])
    lines = ["| contender | median s | candidates/s | batched speed-up |", "|---|---|---|---|"]
    for name, ts in times.items():
        med = statistics.median(ts)
        lines.append(f"| {name} | {med:.2f} | {candidates / med:.1f} | {med / base:.2f}x |")
    load_after = os.getloadavg()
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    targets = [
        f"- {name} time / batched time: {medians[name] / base:.2f}x "
        f"(target >= 4x: {'met' if medians[name] >= 4 * base else 'MISSED'})"
        for name in ("per-sample", "per-query (TRL-style)")
    ]
    report = "\n".join(
        [
            f"{args.queries} queries x N={args.n}, {args.max_new_tokens} new tokens, "
            f"policy dim {args.dim} depth {args.depth}, "
            f"reward model dim 64 depth 1, {args.repeats} interleaved repeats, torch threads {args.threads}.",
            "",
            *lines,
            "",
            "Targets (from issue 13):",
            "",
            *targets,
            "",
            f"Load average (1/5/15 min) before: {'/'.join(f'{x:.2f}' for x in load_before)}, after: "
            f"{'/'.join(f'{x:.2f}' for x in load_after)} (`{uptime}`); 2 cores shared with other jobs.",
        ]
    )
    print(report)
    if not args.quick:
        cmd = "python " + " ".join(sys.argv)
        atomic_write_text(
            Path(args.out),
            f"# Best-of-N throughput\n\nCommand: `{cmd}`\n\n{report}\n\n"
            "The batched sampler generates all queries and samples in one KV-cached call (each prompt "
            "encoded once and its cache shared by its N samples, never copied into them) and scores all "
            "candidates in one reward-model call; 'cache expanded' is the same single call with every "
            "query repeated N times (one row and one cache copy per sample); the others use the same "
            "sampler and reward model query by query (TRL's shape: the query repeated N times) or sample "
            "by sample. Ratios are measured side by side in one run, contenders interleaved.\n",
        )


if __name__ == "__main__":
    main()
